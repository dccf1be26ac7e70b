"""--multi_gpu N: one training step on 2 devices (logical CPU devices / JAX host devices)
updates the weights as one device does, to summation-order noise; a short CLI run on 2
devices trains and writes its outputs; bad set-ups are one line.

The multi-device checks share one subprocess (tests/one_step.py, then the CLI's main in the
same process): the device count must be fixed before the backend starts. Each backend tests
its own path (the suite runs once per KERAS_BACKEND)."""
import json
import os

import numpy as np
import pytest

import compat as C
from helpers import assert_one_error_line, run_main, run_script

pytestmark = pytest.mark.stack

TINY = ['--conv1_filters', '8', '--primary_channels', '2', '--digit_dim', '4',
        '--batch_size', '20', '--test_samples', '40', '--epochs', '2', '--seed', '0']
COLUMNS = ['loss', 'capsnet_loss', 'decoder_loss', 'val_loss']


def trajectory(save_dir):
    import csv
    with open(os.path.join(str(save_dir), 'log.csv')) as f:
        rows = list(csv.DictReader(f))
    return np.array([[float(r[c]) for c in COLUMNS] for r in rows])


MULTI_DEVICE = C.BACKEND == 'jax' or (C.BACKEND == 'tensorflow' and C.KERAS3)
# JAX sees one CPU device unless told before it starts
DEVICES_ENV = {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'} if C.BACKEND == 'jax' else {}


@pytest.fixture(scope='module')
def two_devices(tmp_path_factory):
    """tests/one_step.py 2, then in the same process the CLI on 2 devices (--multi_gpu 2)
    -> (CompletedProcess, the CLI's save_dir)."""
    if not MULTI_DEVICE:
        pytest.skip('TensorFlow (Keras 3) and JAX paths')
    save_dir = str(tmp_path_factory.mktemp('two_devices'))
    proc = run_script(os.path.join('tests', 'one_step.py'), 2, '--',
                      *(TINY + ['--multi_gpu', '2', '--train_samples', '60', '--save_dir', save_dir]),
                      timeout=600, **DEVICES_ENV)
    return proc, save_dir


def test_one_step_on_two_devices_matches_one_device(two_devices):
    """The update of one SGD step on 2 devices equals the 1-device update of the same batch
    to ~1e-5 of its size (measured ~1e-5..1e-6: summation order): a replica that sums its
    gradients instead of averaging them, or loses its half of the batch, is off by ~50 %."""
    proc = two_devices[0]
    found = [l for l in proc.stdout.splitlines() if l.startswith('ONE_STEP ')]
    assert len(found) == 1, proc.stderr[-3000:]
    assert '2 replicas' in proc.stdout.split(found[0])[0]
    rows = json.loads(found[0][len('ONE_STEP '):])
    for row in rows:
        assert row['difference'] <= 1e-4 * row['step'] + 1e-6 * row['scale'], row
    # most tensors move well above float32 rounding, so a scaling error could not hide
    assert sum(row['step'] > 1e-4 * row['scale'] for row in rows) >= 8, rows


def test_cli_on_two_devices_trains_and_writes_outputs(two_devices):
    proc, save_dir = two_devices
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '2 replicas' in proc.stdout.split('ONE_STEP ')[1]  # the CLI's own line
    for name in ['log.csv', 'trained_model.h5', 'weights-02.h5', 'real_and_recon.png']:
        assert os.path.getsize(os.path.join(save_dir, name)) > 0, name
    log = trajectory(save_dir)
    assert log.shape == (2, len(COLUMNS)) and np.isfinite(log).all()
    assert log[1, 0] < log[0, 0]  # it trains


# The two refusals below come before any device is set up: in-process.
def test_batch_not_divisible_is_one_line(tmp_path, capsys):
    code, out, err = run_main(capsys, *TINY, '--multi_gpu', '3', '--train_samples', '60',
                              '--save_dir', tmp_path)
    if C.BACKEND == 'torch':
        assert 'not supported' in err
    assert_one_error_line(code, err, '--multi_gpu')
    assert code == 2 and not os.path.exists(str(tmp_path / 'log.csv'))


@pytest.mark.skipif(C.BACKEND not in ('torch',) and C.KERAS3, reason='torch / legacy CPU only')
def test_unsupported_set_up_is_one_line(tmp_path, capsys):
    code, out, err = run_main(capsys, *TINY, '--multi_gpu', '2', '--train_samples', '60',
                              '--save_dir', tmp_path)
    assert_one_error_line(code, err, '--multi_gpu')
    assert code == 2 and (('torch' in err) if C.KERAS3 else ('GPU' in err))


def test_batches_depend_on_seed_epoch_index_only():
    """Same batch whatever the order / number of reads (prefetching, peeks); every sample once
    per epoch; a new order and new shifts in the next epoch."""
    from batches import ShiftedBatches
    x = np.random.RandomState(0).rand(50, 8, 8, 1).astype('float32')
    y = np.eye(10, dtype='float32')[np.arange(50) % 10]
    first, second = ShiftedBatches(x, y, 20, 2, seed=3), ShiftedBatches(x, y, 20, 2, seed=3)
    second[2], second[0], second[0]  # noqa: B018 (reads in another order)
    for i in [2, 1, 0]:
        np.testing.assert_array_equal(first[i][0][0], second[i][0][0])
    labels = np.concatenate([first[i][0][1] for i in range(len(first))])
    assert len(labels) == 50 and (labels.sum(0) == 5).all()
    epoch0 = first[0][0][0]
    first.set_epoch(1)
    assert np.abs(first[0][0][0] - epoch0).max() > 0.1
    first.set_epoch(0)
    np.testing.assert_array_equal(first[0][0][0], epoch0)
