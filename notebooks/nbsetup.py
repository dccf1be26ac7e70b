"""What the three notebooks share: their settings (small mode, where outputs go), installing
what a fresh runtime lacks, running the repo's command line in the kernel, the checkpoint
each model is shown with, and showing images inline. It calls the repo; it adds no model code.

The notebooks' set-up cell puts the repository root and this folder on sys.path, changes to
the root, then imports this module. Environment variables (all optional):
  CAPSNET_NOTEBOOK_SMALL=1   tiny settings (a few hundred images, 1 epoch, a small CapsNet):
                             what CI runs (tests/test_notebooks.py), under a minute a notebook
  CAPSNET_NOTEBOOK_OUT=DIR   where checkpoints made by the notebooks and figures go
                             (default result/notebooks)
"""
import io
import os
import shlex
import subprocess
import sys
import time

# GPU runtimes: the kernel (which tests and shows models) and a training process may share
# one GPU; without these TensorFlow and JAX each take (nearly) all of its memory at start.
os.environ.setdefault('TF_FORCE_GPU_ALLOW_GROWTH', 'true')
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The repository on GitHub, "owner/name": the notebooks' set-up cell clones it on a fresh Colab
# runtime, and the README's "Open in Colab" links point into it. A placeholder until the
# repository is published: `python notebooks/nbsetup.py --github owner/name` writes the real one
# here, into the three set-up cells and into the README's links (tests/test_readme.py checks
# that they all agree).
GITHUB = 'YOUR-ACCOUNT/capsnet-keras'
NOTEBOOKS = ('quickstart.ipynb', 'train.ipynb', 'perturbation.ipynb')
SMALL = os.environ.get('CAPSNET_NOTEBOOK_SMALL', '') not in ('', '0')
IN_COLAB = 'google.colab' in sys.modules
OUT = os.path.abspath(os.environ.get('CAPSNET_NOTEBOOK_OUT')
                      or os.path.join(REPO, 'result', 'notebooks'))
os.makedirs(OUT, exist_ok=True)

# The shipped weights (paper architecture / Efficient-CapsNet's), used when present.
PRETRAINED = {'capsnet': 'pretrained/capsnet_r3.h5', 'efficient': 'pretrained/efficient_capsnet.h5'}
# Small mode: a CapsNet of 16 conv1 filters and 4 primary channels (the tests' tiny model);
# Efficient-CapsNet has no size flags and is small already.
TINY_FLAGS = {'capsnet': ['--conv1_filters', '16', '--primary_channels', '4'], 'efficient': []}
# Images used: small mode keeps each notebook under a minute on a CPU; otherwise a checkpoint
# made here sees 10,000 training images for one epoch (about 94% for CapsNet; minutes on a
# CPU, seconds on a GPU) and tests run on the whole test set.
TRAIN_SAMPLES = 128 if SMALL else 10000
TEST_SAMPLES = 100 if SMALL else None

# What requirements.txt installs, by import name: a runtime lacking one gets the file installed.
_NEEDED = ('keras', 'h5py', 'idx2numpy', 'pandas', 'matplotlib', 'scipy')


def install_missing(requirements='requirements.txt'):
    """pip-installs requirements.txt when one of its modules is missing (a fresh Colab
    runtime lacks idx2numpy). A TensorFlow already installed (Colab's, with GPU support) is
    kept: the file's CPU-only `tensorflow-cpu` line is left out then."""
    import importlib.util
    missing = [m for m in _NEEDED if importlib.util.find_spec(m) is None]
    if not missing:
        return
    path = os.path.join(REPO, requirements)
    if importlib.util.find_spec('tensorflow') is not None:
        with open(path) as f:
            lines = [l for l in f if not l.lstrip().startswith('tensorflow')]
        path = os.path.join(OUT, 'requirements-kept-tensorflow.txt')
        os.makedirs(OUT, exist_ok=True)
        with open(path, 'w') as f:
            f.writelines(lines)
    print('installing %s (missing: %s)' % (requirements, ', '.join(missing)))
    subprocess.check_call([sys.executable, '-m', 'pip', 'install', '-q', '-r', path])


def describe_stack():
    """Prints the Keras version, the backend and the devices it will compute on; returns
    the list of GPU names (empty on a CPU machine)."""
    import compat as C
    print(C.stack_line())
    return C.gpu_names()


def cli(*args):
    """`python capsulenet.py args...`, run in this kernel (capsulenet.main: its output and
    Keras' progress bar appear in the notebook). A failure (exit code not 0) raises, so the
    cell fails, as it fails CI."""
    import capsulenet
    import compat as C
    argv = [str(a) for a in args]
    print('$ python capsulenet.py %s' % ' '.join(shlex.quote(a) for a in argv))
    sys.stdout.flush()
    C.clear_session()  # each command line starts from a fresh Keras session, as a process does
    code = capsulenet.main(argv)
    if code:
        raise RuntimeError('python capsulenet.py %s: exit code %s (see the error line above)'
                           % (' '.join(argv), code))


def start_cli(*args, output='train.out'):
    """`python capsulenet.py args...` as a separate process (the notebook stays free to plot
    its log while it trains) writing its output to <--save_dir>/<output> -> Popen."""
    argv = [str(a) for a in args]
    save_dir = argv[argv.index('--save_dir') + 1] if '--save_dir' in argv else 'result'
    os.makedirs(save_dir, exist_ok=True)
    path = os.path.join(save_dir, output)
    print('$ python capsulenet.py %s > %s' % (' '.join(shlex.quote(a) for a in argv), path))
    with open(path, 'a') as out:  # appended: a resumed run keeps the earlier output above it
        process = subprocess.Popen([sys.executable, os.path.join(REPO, 'capsulenet.py')] + argv,
                                   stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                   env=dict(os.environ, PYTHONUNBUFFERED='1'))
    process.command_line = 'python capsulenet.py %s' % ' '.join(shlex.quote(a) for a in argv)
    return process


def _tail(path, lines):
    try:
        with open(path, errors='replace') as f:
            text = f.read().replace('\r', '\n')
    except OSError:
        return ''
    return '\n'.join([l for l in text.splitlines() if l.strip()][-lines:])


def watch(process, save_dir, every=None, lines=8, output='train.out'):
    """Until `process` (from start_cli) ends: every `every` s (default 2 in small mode, else
    20) re-plots <save_dir>/log.csv with utils.plot_log when it has changed and shows the last
    `lines` of its output. Raises when the process fails. Interrupting stops the watching only.
    """
    import utils
    from IPython.display import clear_output
    every = every or (2 if SMALL else 20)
    log, png = os.path.join(save_dir, 'log.csv'), os.path.join(save_dir, 'log-live.png')
    plotted, last = None, 0.
    try:
        while True:
            done = process.poll() is not None
            if done or time.time() - last >= every:
                last = time.time()
                stamp = os.path.getmtime(log) if os.path.isfile(log) else None
                if stamp is not None and stamp != plotted:
                    try:
                        utils.plot_log(log, png)
                        plotted = stamp
                    except utils.UserError:  # header only so far
                        pass
                clear_output(wait=True)
                print('$ %s' % getattr(process, 'command_line', ''))
                if plotted is not None:
                    show(png, width=500)
                print(_tail(os.path.join(save_dir, output), lines))
                sys.stdout.flush()
            if done:
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        print('stopped watching; the training goes on (process %d); run this cell again to '
              'watch it' % process.pid)
        return
    if process.returncode:
        raise RuntimeError('training failed (exit code %d); its output: %s'
                           % (process.returncode, os.path.join(save_dir, output)))


def data_flags(testing=False):
    """--train_samples / --test_samples of this mode (none: all of MNIST)."""
    flags = [] if testing else ['--train_samples', TRAIN_SAMPLES]
    return flags + (['--test_samples', TEST_SAMPLES] if TEST_SAMPLES else [])


def checkpoint(model):
    """(weights file, architecture flags) to show `model` ('capsnet' or 'efficient') with:
    the shipped pretrained/ file when there is one, else a checkpoint made here by one short
    training run (made once, reused by the other notebooks)."""
    path = os.path.join(REPO, PRETRAINED[model])
    if os.path.isfile(path):
        print('%s: the pretrained weights %s' % (model, PRETRAINED[model]))
        return path, []
    flags = TINY_FLAGS[model] if SMALL else []
    save_dir = os.path.join(OUT, ('small-' if SMALL else '') + model)
    weights = os.path.join(save_dir, 'trained_model.h5')
    if os.path.isfile(weights):
        print('%s: %s is missing; using the checkpoint made earlier here: %s'
              % (model, PRETRAINED[model], weights))
        return weights, flags
    print('%s: %s is missing; making a checkpoint here (1 epoch on %d images)'
          % (model, PRETRAINED[model], TRAIN_SAMPLES))
    cli('--model', model, '--epochs', 1, '--save_dir', save_dir,
        *(flags + data_flags()))
    return weights, flags


def show(path, width=None):
    """Shows the image file at path inline."""
    from IPython.display import Image, display
    display(Image(filename=path, width=width))


def show_figure(figure):
    """Shows a matplotlib figure inline as a PNG, whatever matplotlib backend is active
    (the repo's plotting draws on figures of its own, not pyplot's: they do not show themselves)."""
    from IPython.display import Image, display
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png')
    display(Image(data=buffer.getvalue()))


def colab_url(notebook, github=GITHUB, branch='main'):
    """The "Open in Colab" address of notebooks/<notebook> in the GitHub repository."""
    return 'https://colab.research.google.com/github/%s/blob/%s/notebooks/%s' % (
        github, branch, notebook)


def set_github(new, old=GITHUB, root=REPO):
    """Replaces the repository `old` ("owner/name") by `new` in nbsetup.py, the notebooks and
    README.md under `root` (the set-up cells' REPO_URL and the Colab links). Returns the
    files changed, relative to root."""
    if new.count('/') != 1 or any(c in new for c in ' "\'\\'):
        raise SystemExit('error: --github takes "owner/name", e.g. someone/capsnet-keras')
    paths = [os.path.join(root, 'notebooks', 'nbsetup.py'), os.path.join(root, 'README.md')] + [
        os.path.join(root, 'notebooks', n) for n in NOTEBOOKS]
    changed = []
    for path in paths:
        with open(path, encoding='utf-8') as f:
            text = f.read()
        if old in text:
            with open(path, 'w', encoding='utf-8') as f:
                f.write(text.replace(old, new))
            changed.append(os.path.relpath(path, root))
    return changed


if __name__ == '__main__':
    import argparse
    parser = argparse.ArgumentParser(description="Point the notebooks and the README's Colab "
                                     'links at the GitHub repository OWNER/NAME.')
    parser.add_argument('--github', required=True, metavar='OWNER/NAME')
    for name in set_github(parser.parse_args().github):
        print('updated %s' % name)
