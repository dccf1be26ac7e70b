"""Table 1 reproduction: the runner trains each configuration, resumes, prints paper vs ours."""
import os

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
    assert rows[2] == '| CapsNet, routing 3, reconstruction | 0.25 ± 0.005 | 0.75 | 2 | capsnet_r3_recon_2ep.csv |'
    assert rows[3].startswith('| CapsNet, routing 1, no reconstruction | 0.34 ± 0.032 | 1.00 | 1 |')
    assert rows[4].startswith('| efficient | – | 0.50 | 1 |')


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
