"""results_docs.py: the results rows of README.md and CSV_data/README.md are the logs' figures."""
import csv
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import results_docs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_committed_rows_are_rendered_from_their_logs():
    # a log committed without its rows, or a figure typed by hand, fails here
    assert results_docs.refresh(ROOT, check=True) == []


def _errors(path):
    """Test error % per epoch of a CSVLogger file, read without the repo's code."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    column = [c for c in rows[0] if c.startswith('val_') and c.endswith('accuracy')][0]
    return np.array([100 * (1 - float(r[column])) for r in rows])


def _section(text, marker):
    return text.split('<!-- %s' % marker)[1].split('<!-- /%s' % marker)[0]


def test_readme_figures_equal_an_independent_reading_of_the_logs():
    with open(os.path.join(ROOT, 'README.md')) as f:
        rows = [l for l in _section(f.read(), 'TABLE1-ROWS').splitlines()
                if l.startswith('|') and l.count('CSV_data/table1/') == 1]
    assert len(rows) >= 7  # Table 1's six configurations and the pooled CNN
    for row in rows:
        name = re.search(r'CSV_data/table1/(\w+)\.csv', row).group(1)
        errors = _errors(os.path.join(ROOT, 'CSV_data', 'table1', name + '.csv'))
        last = float(re.search(r'([\d.]+) %, last epoch', row).group(1))
        assert last == pytest.approx(100 - errors[-1], abs=0.006), name
        done, planned = map(int, re.search(r'\| (\d+) of (\d+) \|', row).groups())
        assert done == len(errors) and ('(running)' in row) == (done < planned), name
        spread = re.search(r'([\d.]+) ± ([\d.]+) %, last 5', row)
        if len(errors) >= 5:
            tail = errors[-5:]
            assert float(spread.group(1)) == pytest.approx(100 - tail.mean(), abs=0.006), name
            assert float(spread.group(2)) == pytest.approx(tail.std(ddof=1), abs=0.006), name
        else:
            assert spread is None, name


def test_readme_seeds_row_equals_an_independent_reading_of_its_logs():
    with open(os.path.join(ROOT, 'README.md')) as f:
        rows = [l for l in _section(f.read(), 'TABLE1-ROWS').splitlines()
                if l.count('CSV_data/table1/') > 1]
    assert len(rows) == 1  # routing 3 with reconstruction, 3 seeds
    names = re.findall(r'CSV_data/table1/(\w+)\.csv', rows[0])
    cell = re.search(r'\| (\d+), (\d+) of (\d+) seeds \|', rows[0])
    epoch, done, seeds = map(int, cell.groups())
    runs = [_errors(os.path.join(ROOT, 'CSV_data', 'table1', n + '.csv')) for n in names
            if os.path.isfile(os.path.join(ROOT, 'CSV_data', 'table1', n + '.csv'))]
    at_epoch = [errors[epoch - 1] for errors in runs if len(errors) >= epoch]
    assert seeds == len(names) == 3 and done == len(at_epoch) >= 1
    listed = ', '.join('%.2f' % (100 - round(e, 2)) for e in at_epoch)
    if done < seeds:
        assert '%d of 3 seeds at epoch %d: %s %%' % (done, epoch, listed) in rows[0]
    else:
        mean = 100 - round(np.mean(at_epoch), 2)
        assert '%.2f ± %.3f %%, 3 seeds at epoch %d (%s %%)' % (
            mean, np.std(at_epoch, ddof=1), epoch, listed) in rows[0]


def _seeds_tree(tmp_path, runs, cell='30, 0 of 3 seeds'):
    """A README with one row over three seed logs; runs: accuracies per log (None: no log)."""
    (tmp_path / 'CSV_data' / 'table1').mkdir(parents=True)
    names = ['r3_recon', 'r3_recon_seed1', 'r3_recon_seed2']
    for name, accuracies in zip(names, runs):
        if accuracies is not None:
            with open(tmp_path / 'CSV_data' / 'table1' / (name + '.csv'), 'w') as f:
                f.write('epoch,val_capsnet_accuracy\n')
                f.writelines('%d,%s\n' % (i, a) for i, a in enumerate(accuracies))
    logs = ', '.join('`CSV_data/table1/%s.csv`' % n for n in names)
    (tmp_path / 'README.md').write_text(
        '<!-- TABLE1-ROWS -->\n| model | paper | ours | epochs | log |\n| --- | --- | --- | --- | --- |\n'
        '| r3, 3 seeds | 99.75 ± 0.005 %% | x | %s | %s |\n<!-- /TABLE1-ROWS -->\n' % (cell, logs))
    (tmp_path / 'CSV_data' / 'README.md').write_text('<!-- TABLE1-LOGS -->\n<!-- /TABLE1-LOGS -->\n')


def _seeds_cells(tmp_path):
    results_docs.refresh(str(tmp_path))
    row = [l for l in (tmp_path / 'README.md').read_text().splitlines() if 'r3, 3 seeds' in l][0]
    return [c.strip() for c in row.strip('|').split('|')][2:4]


def test_seeds_row_lists_the_seeds_that_reached_the_epoch_until_all_did(tmp_path):
    _seeds_tree(tmp_path, [[0.99, 0.9961, 0.997], [0.99], None], cell='2, 0 of 3 seeds')
    assert _seeds_cells(tmp_path) == ['1 of 3 seeds at epoch 2: 99.61 % (2 still to run)',
                                      '2, 1 of 3 seeds']
    _seeds_tree(tmp_path / 'b', [[0.99, 0.9961], [0.99, 0.995], [0.99]], cell='2, 1 of 3 seeds')
    assert _seeds_cells(tmp_path / 'b') == [
        '2 of 3 seeds at epoch 2: 99.61, 99.50 % (1 still to run)', '2, 2 of 3 seeds']


def test_seeds_row_is_the_mean_and_sample_std_at_the_epoch_once_all_reached_it(tmp_path):
    # errors at epoch 2: 0.40, 0.50, 0.28: mean 0.393 (99.61 %), std 0.110 (by hand)
    _seeds_tree(tmp_path, [[0.99, 0.996, 0.997], [0.99, 0.995], [0.99, 0.9972]],
                cell='2, 1 of 3 seeds')
    assert _seeds_cells(tmp_path) == ['99.61 ± 0.110 %, 3 seeds at epoch 2 (99.60, 99.50, 99.72 %)',
                                      '2, 3 of 3 seeds']


def test_seeds_row_with_a_nan_seed_has_no_mean(tmp_path):
    _seeds_tree(tmp_path, [[0.996], ['nan'], [0.997]], cell='1, 0 of 3 seeds')
    ours, epochs = _seeds_cells(tmp_path)
    assert ours.startswith('– (no test accuracy at epoch 1 in every seed') and '–' in ours[2:]
    assert epochs == '1, 3 of 3 seeds'


def test_seeds_row_with_a_bad_epochs_cell_is_one_error_line(tmp_path):
    _seeds_tree(tmp_path, [[0.996], None, None], cell='30 of 30')
    before = (tmp_path / 'README.md').read_text()
    result = _cli(tmp_path)
    assert result.returncode == 2 and "is not 'E, N of M seeds'" in result.stderr, result
    assert (tmp_path / 'README.md').read_text() == before


def _tree(tmp_path, accuracies, readme_row, logs_row):
    """A repo-shaped folder: one log (r1_recon.csv) and the two documents with one row each."""
    (tmp_path / 'CSV_data' / 'table1').mkdir(parents=True)
    with open(tmp_path / 'CSV_data' / 'table1' / 'r1_recon.csv', 'w') as f:
        f.write('epoch,epoch_time,loss,val_capsnet_accuracy\n')
        for i, a in enumerate(accuracies):
            f.write('%d,%s,0.1,%s\n' % (i, 100.4 + i, a))
    (tmp_path / 'README.md').write_text(
        'intro\n<!-- TABLE1-ROWS: x -->\n| model | paper | ours | epochs | log |\n'
        '| --- | --- | --- | --- | --- |\n%s\n| other | 1 %% | 2 %% | 3 | `CSV_data/x.csv` |\n'
        '<!-- /TABLE1-ROWS -->\nend\n' % readme_row)
    (tmp_path / 'CSV_data' / 'README.md').write_text(
        '<!-- TABLE1-LOGS -->\n| file | configuration | precision | epochs | test error %% per '
        'epoch | epoch time (s) | command |\n|---|---|---|---|---|---|---|\n%s\n'
        '| `seed9.csv` | s | bf16 | not started | – | – | `python capsulenet.py --epochs 30` |\n'
        '<!-- /TABLE1-LOGS -->\n' % logs_row)


def test_rows_are_rewritten_from_the_log(tmp_path):
    _tree(tmp_path, [0.98, 0.99, 0.995, 0.996, 0.997, 0.9969],
          '| r1 | 99.71 % | 99.00 %, last epoch | 2 of 30 | `CSV_data/table1/r1_recon.csv` |',
          '| `r1_recon.csv` | r1 | bf16 | 2 of 30 | 2.00 | 100 | `cmd` |')
    assert results_docs.refresh(str(tmp_path), check=True) == ['README.md', 'CSV_data/README.md']
    assert results_docs.refresh(str(tmp_path)) == ['README.md', 'CSV_data/README.md']
    readme = (tmp_path / 'README.md').read_text()
    # errors 2, 1, 0.5, 0.4, 0.3, 0.31: the last 5 average 0.502 (std 0.2899)
    assert ('| r1 | 99.71 % | 99.69 %, last epoch; 99.50 ± 0.29 %, last 5 (running) | 6 of 30 | '
            '`CSV_data/table1/r1_recon.csv` |') in readme
    assert '| other | 1 % | 2 % | 3 | `CSV_data/x.csv` |' in readme  # not a table1 log
    logs = (tmp_path / 'CSV_data' / 'README.md').read_text()
    assert ('| `r1_recon.csv` | r1 | bf16 | 6 of 30 | 2.00 → 1.00 → 0.50 → 0.40 → 0.30 → 0.31 | '
            '100, 101, 102, 103, 104, 105 | `cmd` |') in logs
    assert '| `seed9.csv` | s | bf16 | not started | – | – |' in logs  # no log yet: as it was
    assert results_docs.refresh(str(tmp_path), check=True) == []


def test_finished_run_is_not_running_and_short_run_has_no_spread(tmp_path):
    _tree(tmp_path, [0.99, 0.995],
          '| r1 | 99.71 % | x | 0 of 2 | `CSV_data/table1/r1_recon.csv` |',
          '| `r1_recon.csv` | r1 | bf16 | 0 of 2 | – | – | `cmd` |')
    results_docs.refresh(str(tmp_path))
    assert '| 99.50 %, last epoch | 2 of 2 |' in (tmp_path / 'README.md').read_text()


def test_a_run_that_starts_takes_its_planned_epochs_from_its_command(tmp_path):
    _tree(tmp_path, [0.99],
          '| r1 | 99.71 % | x | 0 of 30 | `CSV_data/table1/r1_recon.csv` |',
          '| `r1_recon.csv` | r1 | bf16 | not started | – | – | `python capsulenet.py --routings 1 '
          '--epochs 30 --seed 1` |')
    results_docs.refresh(str(tmp_path))
    assert '| bf16 | 1 of 30 | 1.00 | 100 |' in (tmp_path / 'CSV_data' / 'README.md').read_text()


def test_a_nan_epoch_is_a_dash_not_a_crash(tmp_path):
    _tree(tmp_path, [0.99, 0.995, 'nan'],
          '| r1 | 99.71 % | x | 0 of 30 | `CSV_data/table1/r1_recon.csv` |',
          '| `r1_recon.csv` | r1 | bf16 | 0 of 30 | – | – | `cmd` |')
    results_docs.refresh(str(tmp_path))
    assert '| – (no test accuracy at the last epoch: NaN) (running) | 3 of 30 |' in (
        tmp_path / 'README.md').read_text()
    assert '| 3 of 30 | 1.00 → 0.50 → – |' in (tmp_path / 'CSV_data' / 'README.md').read_text()


def _cli(tmp_path, *args):
    script = 'import sys, results_docs; results_docs.HERE = sys.argv[1]; ' \
             'sys.exit(results_docs.main(sys.argv[2:]))'
    return subprocess.run([sys.executable, '-c', script, str(tmp_path)] + list(args), cwd=ROOT,
                          capture_output=True, text=True)


def test_check_exits_1_naming_the_documents_and_writes_nothing(tmp_path):
    row = '| r1 | 99.71 % | 99.00 %, last epoch | 1 of 30 | `CSV_data/table1/r1_recon.csv` |'
    _tree(tmp_path, [0.98, 0.99], row, '| `r1_recon.csv` | r1 | bf16 | 2 of 30 | 2.00 → 1.00 | '
                                       '100, 101 | `cmd` |')
    result = _cli(tmp_path, '--check')
    assert result.returncode == 1 and 'README.md' in result.stdout, result
    assert row in (tmp_path / 'README.md').read_text()


@pytest.mark.parametrize('damage, message', [
    (lambda p: (p / 'README.md').write_text('no section here\n'), 'no single <!-- TABLE1-ROWS'),
    (lambda p: (p / 'CSV_data' / 'table1' / 'r1_recon.csv').write_text('epoch,val_capsnet_'
                                                                       'accuracy\n0,abc\n'),
     'non-numeric'),
    (lambda p: (p / 'README.md').write_text((p / 'README.md').read_text().replace(
        '1 of 30', 'one')), "is not 'N of M'"),
])
def test_bad_documents_and_logs_are_one_error_line(tmp_path, damage, message):
    _tree(tmp_path, [0.98, 0.99],
          '| r1 | 99.71 % | 99.00 %, last epoch | 1 of 30 | `CSV_data/table1/r1_recon.csv` |',
          '| `r1_recon.csv` | r1 | bf16 | 2 of 30 | 2.00 → 1.00 | 100, 101 | `cmd` |')
    damage(tmp_path)
    before = (tmp_path / 'README.md').read_text()
    result = _cli(tmp_path)
    assert result.returncode == 2 and 'Traceback' not in result.stderr, result
    assert result.stderr.startswith('error: ') and message in result.stderr, result.stderr
    assert (tmp_path / 'README.md').read_text() == before  # nothing half-written
