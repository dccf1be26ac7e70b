"""The command line: a short real-MNIST run learns (the subprocess smoke test of
capsulenet.py) and prints no TensorFlow C++ log lines ("oneDNN custom operations are on...",
"All log messages before absl::InitializeLog()...", I0000/E0000 lines) unless the user sets
TF_CPP_MIN_LOG_LEVEL; -t -w reproduces it; flags of another model are refused in one line."""
import os
import re

import pytest

import compat as C
import helpers
from helpers import accuracy_from, assert_image, assert_one_error_line, run_main, run_script

pytestmark = pytest.mark.end_to_end

# a tiny CapsNet (16 conv1 filters, 4 primary channels) at 3x the paper's learning rate: one
# epoch on 6,000 images gave 92.4 % (seed 1) and 92.3 % (seed 2), Keras 3 + TensorFlow, on
# 2026-12-01 (10,000 images: 95.1 %, 4 s more)
QUICK = helpers.TINY_FLAGS + ['--batch_size', '50', '--lr', '0.003', '--train_samples', '6000',
                              '--test_samples', '1000', '--seed', '1']


CHATTER = ('oneDNN custom operations', 'absl::InitializeLog', 'node_def_util')
LOG_LINE = re.compile(r'^[IWEF]\d{4} ', re.M)  # absl's prefix: I0000 00:00:... file.cc:NN]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """The run, with TF_CPP_MIN_LOG_LEVEL unset (helpers and .ci/run set it) and --seed, under
    which TensorFlow 2.21's tf.data logs an ERROR line -> (save_dir, stdout, stderr)."""
    save_dir = str(tmp_path_factory.mktemp('result'))
    proc = run_script('capsulenet.py', '--epochs', '1', '--save_dir', save_dir, *QUICK,
                      TF_CPP_MIN_LOG_LEVEL=None)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return save_dir, proc.stdout, proc.stderr


def test_short_run_learns_and_writes_outputs(trained):
    save_dir, out, _ = trained
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


@pytest.mark.skipif(not C.KERAS3, reason='keras 2.2.4 runs on the legacy harness, its own logs')
def test_training_prints_no_tensorflow_log_lines(trained):
    err = trained[2]
    for text in CHATTER:
        assert text not in err, err
    assert not LOG_LINE.search(err), err


# A TF_CPP_MIN_LOG_LEVEL the user set is kept: tests/test_threads.py (its fresh-process probe).


def test_testing_mode_reloads_same_accuracy(trained, tmp_path, capsys):
    save_dir, out, _ = trained
    weights = os.path.join(save_dir, 'trained_model.h5')
    code, out2, err = run_main(capsys, '-t', '-w', weights, '--digit', '3', '--save_dir',
                               str(tmp_path), *QUICK)
    assert code == 0, err[-3000:]
    assert abs(accuracy_from(out2) - accuracy_from(out)) < 1e-6
    assert_image(str(tmp_path / 'real_and_recon.png'))
    assert_image(str(tmp_path / 'manipulate-3.png'))
    import matplotlib.image
    grid = matplotlib.image.imread(str(tmp_path / 'manipulate-3.png'))
    assert grid.shape[:2] == (16 * 28, 11 * 28)


def test_debug_writes_tensorboard_logs(tmp_path, capsys):
    """--debug adds Keras' TensorBoard callback (weight histograms); on keras 2.2.4 its import
    of tf.contrib is what tests/legacy/shim restoration 4 answers."""
    if C.KERAS3:  # Keras 3's callback needs the tensorboard package, not in requirements.txt
        pytest.importorskip('tensorboard')
    code, out, err = run_main(capsys, '--debug', '--epochs', '1', '--batch_size', '50',
                              '--train_samples', '100', '--test_samples', '50',
                              '--save_dir', str(tmp_path), *helpers.TINY_FLAGS)
    assert code == 0, err[-3000:]
    events = list((tmp_path / 'tensorboard-logs').rglob('events.out.tfevents.*'))
    assert events and all(e.stat().st_size > 0 for e in events)


# Bad input (flags, weights files, idx files) is tested once each, in test_robustness.py.
def test_help_lists_flags(capsys):
    code, out, err = run_main(capsys, '-h')
    assert code == 0
    for flag in ['--routings', '--lam_recon', '--shift_fraction', '--train_samples', '--digit']:
        assert flag in out
    assert '(default: capsnet 50, cnn 50, efficient 150)' in ' '.join(out.split())


def test_flags_of_another_model_are_one_line(capsys, tmp_path):
    for argv, flag in [(['--model', 'efficient', '--routings', '2'], '--routings'),
                       (['--model', 'cnn', '--primary_channels', '4'], '--primary_channels'),
                       (['--pools', '0'], '--pools'),
                       (['--model', 'cnn', '--pools', '4'], '--pools'),
                       (['--affnist_dir', str(tmp_path)], '--affnist_dir'),
                       # their batches bring their own augmentation
                       (['--dataset', 'multimnist', '--shift_fraction', '0.05'],
                        '--shift_fraction'),
                       (['--dataset', 'smallnorb', '--augment', 'shift'], '--augment'),
                       (['--dataset', 'affnist', '--augment', 'efficient'], '--augment')]:
        code, out, err = run_main(capsys, '--save_dir', str(tmp_path / 'out'), *argv)
        assert_one_error_line(code, err, flag)
        assert code == 2 and not (tmp_path / 'out').exists()
