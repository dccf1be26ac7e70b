"""The README's commands, so that it cannot rot: every `python ...` line of its ```bash blocks
is either run here, in README order (in-process, with the smaller settings of `_substitute`,
outputs under a temporary folder), or listed in SKIPPED with the reason it is not run. A
README command in neither, or a SKIPPED entry that no README command matches, fails.
Also: the README's Colab links and the notebooks' set-up cells name one repository
(notebooks/nbsetup.py GITHUB), and `nbsetup.py --github` rewrites them all.

Keras 3 + TensorFlow only (no marker: the full suite of .ci/run); about 20 s of CPU time.
"""
import glob
import json
import os
import re
import shlex
import shutil
import sys

import pytest

from conftest import ROOT
from helpers import TINY_FLAGS, run_main

README = os.path.join(ROOT, 'README.md')

# README command (its start) -> why it is not run here.
SKIPPED = {
    'python3 -m venv': 'installs packages (what .ci/run does)',
    'python capsulenet.py --routings 3 --save_dir result/capsnet':
        'the 50-epoch paper run; the same command line trains a tiny CapsNet in this test for '
        'the "Test" commands below it (see _substitute)',
    'python capsulenet.py --model efficient --save_dir':
        "150 epochs; Efficient-CapsNet's command line runs in tests/test_efficient.py",
    'python capsulenet.py --model cnn': 'the CNN baseline trains through the CLI in tests/test_affnist.py',
    'python capsulenet.py --dataset multimnist':
        'MultiMNIST trains through the CLI in tests/test_multimnist_model.py',
    'python capsulenet.py --reproduce table1': 'trains five configurations; tests/test_reproduce.py',
    'python benchmarks/bench.py': 'minutes per backend; its smoke run is tests/test_bench.py',
    'python -m pytest': 'the test suite itself',
    'python predict.py': "the README's image files are the user's; tests/test_predict.py runs "
                         'it on MNIST digits written as PNG and JPEG',
    'python export_model.py': 'writes a 33 MB model and loads it back; tests/test_export_model.py '
                              'runs it on a tiny CapsNet',
}
# the README's long runs whose output the next commands use: trained tiny here instead
TRAIN_TINY = ('python capsulenet.py --epochs 1 --train_samples 10000',
              'python capsulenet.py --routings 3 --save_dir result/capsnet')


def readme_commands(text=None):
    """The shell commands of the README's ```bash blocks, one string each (continuation lines
    joined, comments dropped)."""
    if text is None:
        with open(README, encoding='utf-8') as f:
            text = f.read()
    commands = []
    for block in re.findall(r'```bash\n(.*?)```', text, re.S):
        for line in block.replace('\\\n', ' ').splitlines():
            line = line.split(' #')[0].strip()
            if line and not line.startswith('#'):
                commands.append(' '.join(line.split()))
    return commands


def python_commands():
    return [c for c in readme_commands() if re.match(r'(\w+=\S+ )*python', c)]


def _skip_reason(command):
    if command.startswith(TRAIN_TINY[1]):
        return None  # run tiny, below
    return next((why for start, why in SKIPPED.items() if command.startswith(start)), None)


def test_every_python_command_is_run_or_skipped_with_a_reason():
    commands = python_commands()
    assert len(commands) >= 10, commands  # the extraction found the README's blocks
    runnable = [c for c in commands if _skip_reason(c) is None]
    unknown = [c for c in runnable if not re.match(r'python (capsulenet|utils|viewer)\.py ', c)]
    assert not unknown, 'add these README commands to tests/test_readme.py: %s' % unknown
    stale = [s for s in SKIPPED if not any(c.startswith(s) for c in commands)]
    assert not stale, 'SKIPPED names commands the README no longer has: %s' % stale


def _substitute(argv, tmp):
    """The README's argv made cheap: result/... paths under tmp; `-t` on the first 100 test
    images; training: 1 epoch on 100 images of a tiny CapsNet (tests/helpers.py TINY_FLAGS),
    and testing its checkpoints with the same flags; the viewer on 20 images."""
    argv = [os.path.join(tmp, a[len('result/'):]) if a.startswith('result/') else a
            for a in argv]
    expanded = []
    for a in argv:  # the shell's globs
        expanded += sorted(glob.glob(os.path.join(ROOT, a))) if '*' in a else [a]
    script, args = expanded[1], expanded[2:]
    if script == 'capsulenet.py' and '-h' not in args:
        ours = '-w' in args and args[args.index('-w') + 1].startswith(tmp)
        if '-t' in args:
            args += ['--test_samples', '100'] + (TINY_FLAGS if ours else [])
        else:
            args += ['--epochs', '1', '--train_samples', '100', '--test_samples', '50'] + TINY_FLAGS
    if script == 'viewer.py':
        args += ['--test_samples', '20']
    return script, args


def test_readme_commands_run(tmp_path, capsys, monkeypatch):
    import capsulenet
    import utils
    import viewer
    monkeypatch.chdir(ROOT)
    mains = {'capsulenet.py': capsulenet.main, 'utils.py': utils.main, 'viewer.py': viewer.main}
    ran = []
    for command in python_commands():
        if _skip_reason(command) is not None:
            continue
        script, args = _substitute(shlex.split(command), str(tmp_path))
        code, out, err = run_main(capsys, *args, main=mains[script])
        assert code in (0, None), '%s\n-> exit %s\n%s\n%s' % (command, code, out, err[-2000:])
        ran.append(command)
        if script == 'capsulenet.py' and '-h' not in args:
            # start-up: one line (model, parameters, stack), not Keras' model summary
            assert 'Total params' not in out, command
            assert len([l for l in out.splitlines() if ' parameters' in l]) == 1, out
        if '--save_dir' in args:
            assert os.listdir(args[args.index('--save_dir') + 1]), command
        if '--out' in args:
            assert os.path.isfile(args[args.index('--out') + 1]), command
    assert any('-t -w pretrained/' in c for c in ran) and any('viewer.py' in c for c in ran), ran


def test_summary_flag_prints_the_keras_summary(tmp_path, capsys):
    code, out, _ = run_main(capsys, '-t', '-w', os.path.join(ROOT, 'pretrained', 'efficient_capsnet.h5'),
                            '--model', 'efficient', '--test_samples', '20', '--summary',
                            '--save_dir', tmp_path)
    assert code == 0
    assert 'Total params' in out and out.index('Total params') < out.index('efficient: ')


def _setup_cell(notebook):
    with open(notebook, encoding='utf-8') as f:
        cells = json.load(f)['cells']
    return next(''.join(c['source']) for c in cells
                if c['cell_type'] == 'code' and 'REPO_URL' in ''.join(c['source']))


def test_colab_links_and_setup_cells_name_one_repository():
    sys.path.insert(0, os.path.join(ROOT, 'notebooks'))
    import nbsetup
    with open(README, encoding='utf-8') as f:
        readme = f.read()
    for name in nbsetup.NOTEBOOKS:
        assert nbsetup.colab_url(name) in readme, name
        assert "'https://github.com/%s'" % nbsetup.GITHUB in _setup_cell(
            os.path.join(ROOT, 'notebooks', name)), name


def test_set_github_rewrites_every_copy(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, 'notebooks'))
    import nbsetup
    os.makedirs(str(tmp_path / 'notebooks'))
    files = ['README.md'] + ['notebooks/%s' % n for n in nbsetup.NOTEBOOKS + ('nbsetup.py',)]
    for name in files:
        shutil.copy(os.path.join(ROOT, name), str(tmp_path / name))
    changed = nbsetup.set_github('someone/capsnets', root=str(tmp_path))
    assert sorted(changed) == sorted(files)
    text = (tmp_path / 'README.md').read_text(encoding='utf-8')
    assert nbsetup.colab_url('train.ipynb', 'someone/capsnets') in text
    assert nbsetup.GITHUB not in text
    assert "'https://github.com/someone/capsnets'" in _setup_cell(str(tmp_path / 'notebooks' / 'train.ipynb'))
    with pytest.raises(SystemExit):
        nbsetup.set_github('not a repository', root=str(tmp_path))


def _table_lines(text):
    """The lines of a Markdown text that are table rows in its source (outside code fences),
    less the header separators."""
    rows, fence = [], False
    for line in text.splitlines():
        if line.lstrip().startswith('```'):
            fence = not fence
        elif not fence and line.startswith('|') and not set(line) <= set('|-: '):
            rows.append(line)
    return rows


def test_every_markdown_table_row_renders_as_a_row():
    """A line between a table's rows (an HTML comment marking a generated part, say) ends the
    table, and GitHub shows the rows after it as one paragraph of pipes."""
    markdown_it = pytest.importorskip('markdown_it')
    md = markdown_it.MarkdownIt('commonmark').enable('table')
    paths = glob.glob(os.path.join(ROOT, '*.md')) + glob.glob(os.path.join(ROOT, '*', '*.md'))
    for path in paths:
        with open(path, encoding='utf-8') as f:
            text = f.read()
        rendered = sum(token.type == 'tr_open' for token in md.parse(text))
        assert rendered == len(_table_lines(text)), os.path.relpath(path, ROOT)
