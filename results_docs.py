"""The results rows of README.md and CSV_data/README.md, rendered from the logs they cite.

    python results_docs.py          # rewrite the rows from CSV_data/table1/*.csv
    python results_docs.py --check  # exit 1, naming each row that differs from its log

README.md, between <!-- TABLE1-ROWS ... --> and <!-- /TABLE1-ROWS -->: each row whose log
cell is `CSV_data/table1/NAME.csv` gets its 'ours' cell (test accuracy at the last epoch; the
mean ± std of the last 5 epochs; '(running)' while fewer epochs than planned) and its epochs
cell ('N of M') from that log. CSV_data/README.md, between <!-- TABLE1-LOGS --> and
<!-- /TABLE1-LOGS -->: each row of `NAME.csv` gets its epochs, test error per epoch and epoch
time cells. M, the planned epochs, is kept from the row; the other cells (paper figures,
configurations, commands) are written by hand. A row whose log does not exist yet is left as
it is. A README row naming several logs, one per seed, with the epochs cell 'E, N of M
seeds', gets the mean ± std of the test accuracy over its seeds at epoch E (Table 1's way:
mean and sample std over trials), or while some have not reached E, the figures of those
that have. The figures are utils.results_table's: the log's validation accuracy (the test
set for runs without --validation_split), rounded to 0.01 % before 100 - x.
"""
if __name__ == '__main__':  # before the imports below
    import safeio
    safeio.interrupt_is_one_line()

import os
import re
import sys

import utils
from safeio import OneLineParser, UserError, atomic_write, run_cli

HERE = os.path.dirname(os.path.abspath(__file__))
LOG_DIR = os.path.join('CSV_data', 'table1')
# (document, section marker, how a row names its log)
README = ('README.md', 'TABLE1-ROWS', re.compile(r'`CSV_data/table1/([\w-]+)\.csv`'))
LOGS = (os.path.join('CSV_data', 'README.md'), 'TABLE1-LOGS', re.compile(r'^\| `([\w-]+)\.csv` \|'))
PLANNED = re.compile(r'^(\d+) of (\d+)$')
SEEDS = re.compile(r'^(\d+), (\d+) of (\d+) seeds$')


def log_figures(path):
    """(test error % per epoch [epochs], epoch times in s [epochs] or None) of one log."""
    _, frame = utils.read_logs([path])[0]
    column = utils._test_accuracy_column(frame)
    if column is None:
        raise UserError('%s has no accuracy column' % path)
    times = frame['epoch_time'].tolist() if 'epoch_time' in frame.columns else None
    return utils.error_percent(frame, column), times


def _accuracy(error):
    """'99.69' for an error of 0.31 (rounded to 0.01 first, as the tables print errors)."""
    return '%.2f' % (100 - float('%.2f' % error))


def ours_cell(errors, planned):
    """README's 'ours': '99.69 %, last epoch; 99.67 ± 0.01 %, last 5' (+ ' (running)')."""
    last, spread, _, epochs = utils._summary_of_errors(errors)
    text = ('%s %%, last epoch' % _accuracy(float(last)) if last != '–' else
            '– (no test accuracy at the last epoch: NaN)')
    if spread != '–':
        mean, std = spread.split(' ± ')
        text += '; %s ± %s %%, last %d' % (_accuracy(float(mean)), std, utils.LAST_N)
    return text + (' (running)' if epochs < planned else '')


def _planned(cell, where):
    match = PLANNED.match(cell)
    if not match:
        raise UserError("%s: the epochs cell %r is not 'N of M'" % (where, cell))
    return int(match.group(2))


def render_row(kind, cells, errors, times, where):
    """cells (a table row split on '|', without the outer ones) with the log's figures."""
    if kind is README:
        planned = _planned(cells[3], where)
        cells[2] = ours_cell(errors, planned)
        cells[3] = '%d of %d' % (len(errors), planned)
    else:
        if PLANNED.match(cells[3]):
            planned = _planned(cells[3], where)
        else:  # 'not started': the planned count is in the command's --epochs
            found = re.search(r'--epochs (\d+)', cells[6])
            planned = int(found.group(1)) if found else len(errors)
        cells[3] = '%d of %d' % (len(errors), planned)
        cells[4] = ' → '.join('%.2f' % e if e == e else '–' for e in errors)  # NaN: '–'
        cells[5] = ', '.join('%d' % round(t) for t in times) if times else '–'
    return cells


def render_seeds_row(cells, runs, where):
    """README cells of a row over seeds (its log cell names one log per seed), with the test
    error of every run [seeds][epochs] at the epoch its epochs cell 'E, N of M seeds' names:
    the mean ± std over the M seeds once all reached E, the paper's way; until then the
    accuracy of those that did."""
    found = SEEDS.match(cells[3])
    if not found:
        raise UserError("%s: the epochs cell %r is not 'E, N of M seeds'" % (where, cells[3]))
    epoch = int(found.group(1))
    done = [errors[epoch - 1] for errors in runs if len(errors) >= epoch]
    listed = ', '.join(_accuracy(e) if e == e else '–' for e in done)  # NaN: '–'
    spread = utils.seed_spread(done)
    if len(done) < len(runs):
        cells[2] = '%d of %d seeds at epoch %d%s (%d still to run)' % (
            len(done), len(runs), epoch, (': %s %%' % listed) if done else '',
            len(runs) - len(done))
    elif spread == '–':
        cells[2] = '– (no test accuracy at epoch %d in every seed: %s %%)' % (epoch, listed)
    else:
        mean, std = spread.split(' ± ')
        cells[2] = '%s ± %s %%, %d seeds at epoch %d (%s %%)' % (
            _accuracy(float(mean)), std, len(runs), epoch, listed)
    cells[3] = '%d, %d of %d seeds' % (epoch, len(done), len(runs))
    return cells


def render(kind, text, root=HERE):
    """text with the rows of its section rendered from their logs; a log that is not there
    leaves its row as it is."""
    name, marker, pattern = kind
    lines = text.split('\n')
    starts = [i for i, l in enumerate(lines) if l.startswith('<!-- %s' % marker)]
    ends = [i for i, l in enumerate(lines) if l.startswith('<!-- /%s' % marker)]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise UserError('%s: no single <!-- %s --> ... <!-- /%s --> section' % (name, marker, marker))
    for i in range(starts[0] + 1, ends[0]):
        paths = [os.path.join(root, LOG_DIR, n + '.csv') for n in pattern.findall(lines[i])]
        if not any(os.path.isfile(p) for p in paths):
            continue
        cells = [c.strip() for c in lines[i].strip().strip('|').split('|')]
        where = '%s line %d' % (name, i + 1)
        if len(paths) > 1:  # a row over seeds: README only (its other documents name one log)
            runs = [log_figures(p)[0] if os.path.isfile(p) else [] for p in paths]
            cells = render_seeds_row(cells, runs, where)
        else:
            errors, times = log_figures(paths[0])
            cells = render_row(kind, cells, errors, times, where)
        lines[i] = '| %s |' % ' | '.join(cells)
    return '\n'.join(lines)


def refresh(root=HERE, check=False):
    """Renders both documents; check: writes nothing. Returns the names of those that
    changed (check: that differ from their logs)."""
    changed = {}
    for kind in (README, LOGS):  # both rendered before either is written
        path = os.path.join(root, kind[0])
        try:
            with open(path, encoding='utf-8') as f:
                text = f.read()
        except OSError as e:
            raise UserError('cannot read %s: %s' % (path, e.strerror or e))
        new = render(kind, text, root)
        if new != text:
            changed[kind[0]] = (path, new)
    for path, new in ([] if check else changed.values()):
        with atomic_write(path) as tmp, open(tmp, 'w', encoding='utf-8') as f:
            f.write(new)
    return list(changed)


def main(argv=None):
    parser = OneLineParser(description=__doc__.split('\n')[0])
    parser.add_argument('--check', action='store_true',
                        help='write nothing; exit 1 if a row differs from its log')
    args = parser.parse_args(argv)

    def body():
        changed = refresh(HERE, check=args.check)  # HERE read now: tests point it elsewhere
        if args.check and changed:
            print('not rendered from their logs: %s (python results_docs.py rewrites them)'
                  % ', '.join(changed))
            return 1
        print(('rewrote %s' % ', '.join(changed)) if changed else 'the rows match their logs')
        return 0
    return run_cli(body)


if __name__ == '__main__':
    sys.exit(main())
