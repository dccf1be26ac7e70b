"""The command line: a short real-MNIST run learns, -t -w reproduces it, bad input is one line."""
import os
import sys

import pytest

from helpers import accuracy_from, assert_image, cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a narrow CapsNet (64 conv1 filters, 8 primary channels) so the run fits in CI
QUICK = ['--conv1_filters', '64', '--primary_channels', '8', '--batch_size', '50',
         '--train_samples', '10000', '--test_samples', '1000', '--seed', '1']


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    save_dir = str(tmp_path_factory.mktemp('result'))
    code, out, err = cli('--epochs', '1', '--save_dir', save_dir, *QUICK)
    assert code == 0, err[-3000:]
    return save_dir, out


def test_short_run_learns_and_writes_outputs(trained):
    save_dir, out = trained
    assert accuracy_from(out) >= 0.90
    for name in ['log.csv', 'trained_model.h5', 'weights-01.h5']:
        assert os.path.getsize(os.path.join(save_dir, name)) > 0
    import pandas as pd
    log = pd.read_csv(os.path.join(save_dir, 'log.csv'))
    assert list(log['epoch']) == [0]
    for column in ['loss', 'capsnet_accuracy', 'val_capsnet_accuracy', 'lr', 'epoch_time']:
        assert column in log.columns
    assert_image(os.path.join(save_dir, 'log.png'))
    assert_image(os.path.join(save_dir, 'real_and_recon.png'))


def test_testing_mode_reloads_same_accuracy(trained, tmp_path):
    save_dir, out = trained
    weights = os.path.join(save_dir, 'trained_model.h5')
    code, out2, err = cli('-t', '-w', weights, '--digit', '3', '--save_dir', str(tmp_path), *QUICK)
    assert code == 0, err[-3000:]
    assert abs(accuracy_from(out2) - accuracy_from(out)) < 1e-6
    assert_image(str(tmp_path / 'real_and_recon.png'))
    assert_image(str(tmp_path / 'manipulate-3.png'))
    import matplotlib.image
    grid = matplotlib.image.imread(str(tmp_path / 'manipulate-3.png'))
    assert grid.shape[:2] == (16 * 28, 11 * 28)


@pytest.mark.parametrize('args,message', [
    (['-t', '-w', 'no/such/weights.h5'], 'weights file not found'),
    (['--routings', '0'], '--routings'),
    (['--batch_size', '0'], '--batch_size'),
    (['--lr', '0'], '--lr'),
    (['--shift_fraction', '0.7'], '--shift_fraction'),
])
def test_bad_input_is_one_line(args, message, tmp_path):
    code, out, err = cli('--save_dir', str(tmp_path), *args)
    assert code != 0
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert lines and lines[-1].startswith('error:') and message in lines[-1]
    assert 'Traceback' not in err


def test_weights_of_other_architecture(tmp_path):
    sys.path.insert(0, ROOT)
    import compat as C
    import h5weights
    from capsulenet import CapsNet
    C.clear_session()
    model, _, _ = CapsNet((28, 28, 1), 5, 3, conv1_filters=64, primary_channels=8)
    path = str(tmp_path / 'other.h5')
    h5weights.save_weights_h5(model, path)
    code, out, err = cli('-t', '-w', path, '--save_dir', str(tmp_path), *QUICK)
    assert code != 0 and 'Traceback' not in err
    assert 'digitcaps' in err.strip().splitlines()[-1]


def test_bad_idx_file_is_one_line(tmp_path):
    import shutil
    data = tmp_path / 'mnist'
    shutil.copytree(os.path.join(ROOT, 'data', 'mnist'), str(data))
    with open(str(data / 't10k-labels-idx1-ubyte.gz'), 'wb') as f:
        import gzip
        f.write(gzip.compress(b'\x00\x00\x08\x03' + b'\x00' * 20))
    code, out, err = cli('-t', '--data_dir', str(data), '--save_dir', str(tmp_path))
    assert code != 0 and 'Traceback' not in err and 'magic' in err.strip().splitlines()[-1]


def test_help_lists_flags():
    code, out, err = cli('-h')
    assert code == 0
    for flag in ['--routings', '--lam_recon', '--shift_fraction', '--train_samples', '--digit']:
        assert flag in out
