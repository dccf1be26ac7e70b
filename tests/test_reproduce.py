"""Table 1 reproduction: the runner trains each configuration, resumes, prints paper vs ours."""
import os

import pytest

import capsulenet
import paper
import utils
import helpers
from helpers import run_main

TINY = helpers.TINY_FLAGS + ['--digit_dim', '8', '--batch_size', '50', '--train_samples', '200',
                             '--test_samples', '100', '--seed', '0']


def write_log(path, val_accs):
    with open(path, 'w') as f:
        f.write('epoch,loss,capsnet_accuracy,val_capsnet_accuracy\n')
        for e, a in enumerate(val_accs):
            f.write('%d,%f,%f,%f\n' % (e, 1 - a, a, a))


def test_results_table_from_logs(tmp_path):
    write_log(str(tmp_path / 'capsnet_r3_recon_2ep.csv'), [0.98, 0.9925])
    write_log(str(tmp_path / 'capsnet_r1_norecon.csv'), [0.99])
    write_log(str(tmp_path / 'efficient.csv'), [0.995])
    table = utils.results_table([str(tmp_path / n) for n in
                                 ['capsnet_r3_recon_2ep.csv', 'capsnet_r1_norecon.csv', 'efficient.csv']])
    rows = table.splitlines()
    assert rows[2] == ('| CapsNet, routing 3, reconstruction | 0.25 ± 0.005 | 0.75 | – | 2 | '
                       '0.75 (epoch 2) | capsnet_r3_recon_2ep.csv |')
    assert rows[3].startswith('| CapsNet, routing 1, no reconstruction | 0.34 ± 0.032 | 1.00 | – | 1 |')
    assert rows[4].startswith('| efficient | – | 0.50 | – | 1 |')


def test_results_table_columns_last_epoch_last_five_and_best_on_test(tmp_path):
    """Ours is the LAST epoch; the last 5 epochs' mean ± sample std is computed from the
    numbers; the best epoch sits only in the column that says it was picked on the test set."""
    import statistics
    accs = [0.9900, 0.9960, 0.9968, 0.9955, 0.9962, 0.9958, 0.9966, 0.9961]
    write_log(str(tmp_path / 'r3_recon.csv'), accs)
    write_log(str(tmp_path / 'r1_norecon_seed1.csv'), accs[:3])
    write_log(str(tmp_path / 'cnn.csv'), accs[:6])
    rows = utils.results_table([str(tmp_path / n) for n in
                                ('r3_recon.csv', 'r1_norecon_seed1.csv', 'cnn.csv')]).splitlines()
    header = [c.strip() for c in rows[0].strip('|').split('|')]
    assert header == ['configuration', 'paper test error %', 'ours, last epoch %',
                      'last 5 epochs, mean ± std %', 'epochs',
                      'best epoch % (selected on the test set)', 'log']
    cells = [c.strip() for c in rows[2].strip('|').split('|')]
    errors = [100 * (1 - float('%f' % a)) for a in accs]
    tail = errors[-5:]
    assert cells == ['CapsNet, routing 3, reconstruction', '0.25 ± 0.005', '%.2f' % errors[-1],
                     '%.2f ± %.2f' % (statistics.mean(tail), statistics.stdev(tail)), '8',
                     '0.32 (epoch 3)', 'r3_recon.csv']
    assert cells[3] == '0.40 ± 0.04'  # by hand: 0.45 0.38 0.42 0.34 0.39
    cells = [c.strip() for c in rows[3].strip('|').split('|')]
    assert cells[:6] == ['CapsNet, routing 1, no reconstruction', '0.34 ± 0.032', '0.32', '–',
                         '3', '0.32 (epoch 3)']
    assert rows[4].startswith('| Baseline CNN | 0.39 | 0.42 | 0.39 ± 0.05 | 6 | 0.32 (epoch 3) |')


def test_results_table_adds_the_mean_and_std_over_seeds_at_the_epoch_all_reached(tmp_path):
    """Table 1's way: mean ± sample std over trials of the test error, here at epoch 2, the
    last one every seed reached; one row for the group, after the per-log rows."""
    import statistics
    logs = {'r3_recon.csv': [0.990, 0.9960, 0.9970], 'r3_recon_seed1.csv': [0.991, 0.9950],
            'r3_recon_seed2.csv': [0.992, 0.9972, 0.9990], 'r1_recon.csv': [0.99, 0.995]}
    for name, accs in logs.items():
        write_log(str(tmp_path / name), accs)
    rows = utils.results_table([str(tmp_path / n) for n in logs]).splitlines()
    assert len(rows) == 2 + 4 + 1  # header, 4 logs, one seed row (r1_recon has one seed)
    at_epoch_2 = [100 * (1 - logs[n][1]) for n in list(logs)[:3]]  # 0.40, 0.50, 0.28
    assert rows[-1] == ('| CapsNet, routing 3, reconstruction: 3 seeds at epoch 2, mean ± std | '
                        '0.25 ± 0.005 | %.2f ± %.3f | – | 2 | – | r3_recon.csv, '
                        'r3_recon_seed1.csv, r3_recon_seed2.csv |'
                        % (statistics.mean(at_epoch_2), statistics.stdev(at_epoch_2)))
    assert '| 0.39 ± 0.110 |' in rows[-1]  # by hand: mean 1.18 / 3, std of (0.007, 0.107, -0.113)


@pytest.mark.parametrize('names', [('r3_recon.csv', 'capsnet_r3_recon_50ep.csv'),  # no seeds
                                   ('r3_recon_seed1.csv', 'capsnet_r3_recon_seed1.csv')])  # twice
def test_results_table_has_no_seed_row_without_distinct_seeds(tmp_path, names):
    for name in names:
        write_log(str(tmp_path / name), [0.99, 0.995])
    rows = utils.results_table([str(tmp_path / n) for n in names]).splitlines()
    assert len(rows) == 4 and 'seeds' not in rows[-1]


def test_seed_spread_needs_two_finite_seeds():
    assert utils.seed_spread([0.25, 0.26, 0.24]) == '0.25 ± 0.010'
    assert utils.seed_spread([0.25]) == '–' and utils.seed_spread([0.25, float('nan')]) == '–'


@pytest.mark.parametrize('bad', ['nan', 'inf', '-inf', '1e308', '-1e308'])
def test_results_table_never_prints_nan_as_ours(tmp_path, bad):
    path = str(tmp_path / 'r3_recon.csv')
    with open(path, 'w') as f:
        f.write('epoch,loss,capsnet_accuracy,val_capsnet_accuracy\n')
        for epoch in range(6):
            f.write('%d,0.1,0.99,%s\n' % (epoch, bad if epoch in (2, 5) else '0.995'))
    row = utils.results_table([path]).splitlines()[2]
    assert 'nan' not in row.lower() and 'inf' not in row.lower()
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert cells[2:6] == ['–', '–', '6', '0.50 (epoch 1)']


def test_config_labels_from_log_names():
    assert utils.config_of('r3_recon') == ('capsnet_r3_recon', 'routing 3, reconstruction')
    assert utils.config_of('capsnet_r1_norecon_10k_1ep') == ('capsnet_r1_norecon',
                                                             'routing 1, no reconstruction')
    assert utils.config_of('r3_recon_seed2') == ('capsnet_r3_recon',
                                                 'routing 3, reconstruction, seed 2')
    assert utils.config_of('cnn') == ('cnn', 'baseline CNN')
    assert utils.config_of('cnn_pooled') == ('cnn_pooled', "CNN of CapsNet's size (pooled)")
    assert utils.config_of('efficient_capsnet') == (None, 'efficient_capsnet')


def test_reproduce_table1_tiny(tmp_path, capsys):
    # three configurations finished already (as an interrupted run leaves them): the runner
    # skips them and trains the other two, one per routing setting and reconstruction weight
    root = tmp_path / 'table1'
    done = ['capsnet_r1_recon', 'capsnet_r2_recon', 'capsnet_r3_norecon']
    for name in done:
        (root / name).mkdir(parents=True)
        write_log(str(root / name / 'log.csv'), [0.9])
        (root / name / 'trained_model.h5').write_bytes(b'')
    code, out, err = run_main(capsys, '--reproduce', 'table1', '--epochs', '1', '--save_dir',
                              str(tmp_path), *TINY)
    assert code == 0, err[-3000:]
    assert out.count('already trained') == 3 and all(n + ': already' in out for n in done)
    table = (root / 'table1.md').read_text().splitlines()
    assert len(table) == 2 + 5 and 'routing 3, reconstruction | 0.25' in '\n'.join(table)
    assert os.path.getsize(str(root / 'table1.png')) > 5000
    for name in ['capsnet_r1_norecon', 'capsnet_r3_recon']:
        assert (root / name / 'trained_model.h5').exists()
        assert (root / (name + '_1ep.csv')).exists()
    # a second run finds every configuration done and only rebuilds the table
    code, out, err = run_main(capsys, '--reproduce', 'table1', '--epochs', '1', '--save_dir',
                              str(tmp_path), *TINY)
    assert code == 0 and out.count('already trained') == 5


def test_reproduce_help_is_its_own(capsys):
    """`--reproduce table1 --help` says what it trains and which flags it sets,
    not the generic help."""
    assert capsulenet.main(['--reproduce', 'table1', '--help']) == 0
    out = capsys.readouterr().out
    assert out.startswith('usage: python capsulenet.py --reproduce table1')
    assert all(name in out for name in paper.TABLE1) and '--routings and --lam_recon' in out
    assert '--conv1_filters' not in out  # the generic help lists every flag
    assert 'baseline CNN' in out and '--model cnn' in out  # Table 1's first row, trained apart
