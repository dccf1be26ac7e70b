"""Checkpoint policy: --keep_checkpoints bounds the save_dir, best_model.h5 follows the best
validation accuracy (also across --resume), float16 weights files load into float32 models."""
import csv
import hashlib
import os

import h5py
import numpy as np
import pytest

import compat as C
import h5weights  # noqa: E402
import capsulenet
import helpers
import training
from runfolder import RunFolder

# routing 1: checkpoint files and resume, not routing, are checked here (~0.3 s less a run)
TINY = helpers.TINY_FLAGS + ['--batch_size', '50', '--seed', '0', '--routings', '1']


def train(capsys, *argv):
    C.clear_session(free_memory=False)
    code = capsulenet.main([str(a) for a in argv] + TINY)
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def files(folder):
    return sorted(n for n in os.listdir(folder) if not n.endswith('.png'))


def digest(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def tiny_model():
    C.clear_session(free_memory=False)
    return capsulenet.CapsNet((28, 28, 1), 10, 1, **helpers.NANO)[0]


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp('mnist'))
    helpers.fake_mnist(folder, 100, 50)
    return folder


def test_keep_checkpoints_keeps_the_newest_pairs_and_resumes(capsys, tmp_path, data_dir):
    save_dir = str(tmp_path / 'run')
    train(capsys, '--epochs', '4', '--data_dir', data_dir, '--save_dir', save_dir)
    assert files(save_dir) == ['best_model.h5', 'log.csv', 'model.json', 'optimizer-03.npz',
                               'optimizer-04.npz', 'trained_model.h5', 'weights-03.h5',
                               'weights-04.h5']
    out = train(capsys, '--epochs', '6', '--resume', '--data_dir', data_dir, '--save_dir', save_dir)
    assert 'Resuming after epoch 4' in out and 'Restored optimizer state' in out
    assert files(save_dir) == ['best_model.h5', 'log.csv', 'model.json', 'optimizer-05.npz',
                               'optimizer-06.npz', 'trained_model.h5', 'weights-05.h5',
                               'weights-06.h5']
    with open(os.path.join(save_dir, 'log.csv')) as f:
        assert [int(r['epoch']) for r in csv.DictReader(f)] == [0, 1, 2, 3, 4, 5]


def test_prune_leaves_later_epochs_alone(tmp_path):
    for epoch in (1, 2, 3, 7):
        for name in ('weights-%02d.h5', 'optimizer-%02d.npz'):
            (tmp_path / (name % epoch)).write_bytes(b'x')
    RunFolder(str(tmp_path)).prune_checkpoints(3, 1)
    assert sorted(os.listdir(str(tmp_path))) == ['optimizer-03.npz', 'optimizer-07.npz',
                                                 'weights-03.h5', 'weights-07.h5']


def test_best_weights_follow_the_best_epoch(tmp_path):
    model = tiny_model()
    path = str(tmp_path / 'best_model.h5')
    best = training.BestWeights(path, 'val_capsnet_accuracy')
    best.set_model(model)
    kernel = model.get_layer('conv1')
    written = {}
    for epoch, accuracy in enumerate([0.5, 0.7, 0.6, float('nan')]):
        kernel.set_weights([w + 1. for w in kernel.get_weights()])  # a different model each epoch
        written[epoch] = kernel.get_weights()[0]
        best.on_epoch_end(epoch, {'val_capsnet_accuracy': accuracy})
    with h5py.File(path, 'r') as f:
        stored = np.asarray(f['conv1']['conv1/kernel:0'])
    np.testing.assert_array_equal(stored, written[1])
    assert best.best == pytest.approx(0.7)


def test_resume_keeps_an_earlier_better_best_model_and_keep_0_keeps_all(capsys, tmp_path,
                                                                        data_dir):
    save_dir = str(tmp_path / 'run')
    keep_all = ['--keep_checkpoints', '0', '--data_dir', data_dir, '--save_dir', save_dir]
    train(capsys, '--epochs', '1', *keep_all)
    log = os.path.join(save_dir, 'log.csv')
    with open(log) as f:
        rows = list(csv.DictReader(f))
    rows[0]['val_capsnet_accuracy'] = '1.0'  # epoch 1 claims to be perfect: nothing beats it
    with open(log, 'w') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    before = digest(os.path.join(save_dir, 'best_model.h5'))
    train(capsys, '--epochs', '3', '--resume', *keep_all)
    assert digest(os.path.join(save_dir, 'best_model.h5')) == before
    assert [n for n in files(save_dir) if n.startswith(('weights-', 'optimizer-'))] == \
        ['optimizer-01.npz', 'optimizer-02.npz', 'optimizer-03.npz',
         'weights-01.h5', 'weights-02.h5', 'weights-03.h5']


def test_float16_file_loads_into_float32_variables(tmp_path):
    model = tiny_model()
    path = str(tmp_path / 'half.h5')
    h5weights.save_weights_h5(model, path, dtype='float16')
    with h5py.File(path, 'r') as f:
        assert f['conv1']['conv1/kernel:0'].dtype == np.float16
    original = model.get_weights()
    other = tiny_model()
    h5weights.load_weights_h5(other, path)
    for a, b in zip(original, other.get_weights()):
        assert b.dtype == np.float32
        np.testing.assert_array_equal(b, a.astype('float16').astype('float32'))
