"""smallNORB through the models and the CLI: Efficient-CapsNet's smallNORB network (parameter
count, instance normalisation and bilinear upsampling against NumPy), the training batches,
and `--dataset smallnorb` on small files written in the real binary-matrix format."""
import os

import numpy as np
import pytest

import capsulenet
import compat as C
import smallnorb as sn
import batches as B
from compat import layers, models
from helpers import accuracy_from, assert_one_error_line, run_main
from test_smallnorb import fake_norb, name, write_norb

pytestmark = pytest.mark.stack


def apply_layer(layer, x, weights=None):
    """layer applied to the NumPy batch x through a one-layer model (weights set if given)."""
    inp = layers.Input(shape=x.shape[1:])
    model = models.Model(inp, layer(inp))
    if weights is not None:
        layer.set_weights(weights)
    return model.predict(x, verbose=0)


# ---------------------------------------------------------------- network
def test_efficient_smallnorb_network():
    """EscVM's smallNORB graph: 48 -> 21 -> 19 -> 17 -> 8, depthwise 8x8 -> 16 capsules of
    8-D, FCCaps 5 x 16-D; 151,664 trainable parameters (the paper's 151K), decoder 229,570."""
    C.clear_session(free_memory=False)
    train_model, eval_model, _ = capsulenet.build_models('efficient', (48, 48, 2), 5, 'smallnorb')
    assert capsulenet.trainable_count(train_model) == 151664
    assert train_model.get_layer('decoder').count_params() == 229570
    sizes = [C.int_shape(train_model.get_layer('in%d' % i).output)[1:] for i in (1, 2, 3, 4)]
    assert sizes == [(21, 21, 32), (19, 19, 64), (17, 17, 64), (8, 8, 128)]
    assert C.int_shape(train_model.get_layer('primarycap_squash').output)[1:] == (16, 8)
    assert [C.int_shape(o)[1:] for o in eval_model.outputs] == [(5,), (48, 48, 2)]


def test_instance_norm_matches_numpy():
    rng = np.random.RandomState(0)
    x = rng.normal(2., 3., (3, 5, 6, 4)).astype('float32')
    gamma, beta = rng.uniform(0.5, 2, 4).astype('float32'), rng.normal(size=4).astype('float32')
    C.clear_session(free_memory=False)
    got = apply_layer(C.instance_norm(4, name='in'), x, [gamma, beta])
    mean, var = x.mean(axis=(1, 2), keepdims=True), x.var(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(got, (x - mean) / np.sqrt(var + 1e-3) * gamma + beta, atol=1e-4)


def test_bilinear_upsampling_matches_numpy_resize():
    x = np.random.RandomState(1).uniform(size=(2, 8, 8, 3)).astype('float32')
    C.clear_session(free_memory=False)
    got = apply_layer(C.upsampling_bilinear(name='up'), x)
    np.testing.assert_allclose(got, sn.resize(x, 16), atol=1e-5)  # tf.image.resize's numbers


# ---------------------------------------------------------------- batches
def test_crop_batches_are_smallnorb_train_batch():
    rng = np.random.RandomState(2)
    x = rng.normal(size=(10, 64, 64, 2)).astype('float32')
    y = np.eye(5, dtype='float32')[np.arange(10) % 5]
    batches = B.CropBatches(x, y, 4, sn.train_batch, seed=3)
    batches.set_epoch(1)
    (patches, labels), (target_y, target_x) = batches[2]
    order = sn.epoch_order(10, 3, 1)
    want_x, want_y = sn.train_batch(x, y, order[8:12], 3, 1, 2)
    np.testing.assert_array_equal(patches, want_x)
    np.testing.assert_array_equal(target_x, want_x)
    np.testing.assert_array_equal(labels, want_y)
    assert patches.shape == (2, 48, 48, 2) and len(batches) == 3


# ---------------------------------------------------------------- CLI
def small_args(folder, model='efficient'):
    flags = {'efficient': [], 'capsnet': ['--conv1_filters', '8', '--primary_channels', '2'],
             'cnn': ['--conv1_filters', '8']}[model]
    return ['--dataset', 'smallnorb', '--smallnorb_dir', str(folder), '--model', model,
            '--epochs', '1', '--batch_size', '8', '--seed', '1'] + flags


# efficient on every stack; the CNN where the CLI training runs are (marker train_cli)
@pytest.mark.parametrize('model', ['efficient', pytest.param('cnn', marks=pytest.mark.train_cli)])
def test_cli_trains_and_tests_smallnorb(tmp_path, capsys, model):
    folder = tmp_path / 'norb'
    folder.mkdir()
    fake_norb(str(folder), n_train=16, n_test=10, size=24, gz=True)
    save = str(tmp_path / 'train')
    code, out, err = run_main(capsys, '--save_dir', save, *small_args(folder, model))
    assert code == 0, err[-3000:]
    assert 'on 10 images' in out
    import pandas as pd
    log = pd.read_csv(os.path.join(save, 'log.csv'))
    column = 'val_accuracy' if model == 'cnn' else 'val_capsnet_accuracy'
    assert abs(log[column].iloc[-1] - accuracy_from(out)) < 1e-6
    if model == 'cnn':
        return
    assert os.path.getsize(os.path.join(save, 'real_and_recon.png')) > 0
    code, out2, err = run_main(capsys, '-t', '-w', os.path.join(save, 'trained_model.h5'),
                               '--save_dir', str(tmp_path / 'test'), '--digit', '2',
                               *small_args(folder, model))
    assert code == 0, err[-3000:]
    assert abs(accuracy_from(out2) - accuracy_from(out)) < 1e-6
    assert os.path.isfile(str(tmp_path / 'test' / 'manipulate-2.png'))


def test_cli_without_files_says_where_to_put_them(tmp_path, capsys):
    code, out, err = run_main(capsys, '--save_dir', str(tmp_path / 'out'),
                              *small_args(tmp_path / 'empty'))
    assert_one_error_line(code, err, 'smallNORB files missing in')
    assert '--smallnorb_dir' in err and 'norb-v1.0-small' in err


def test_cli_bad_file_is_one_line(tmp_path, capsys):
    folder = tmp_path / 'norb'
    folder.mkdir()
    fake_norb(str(folder), n_train=6, n_test=4, size=8)
    write_norb(str(folder / name('test', 'cat')), np.zeros(3, 'int32'))  # 3 labels, 4 images
    save = tmp_path / 'out'
    code, out, err = run_main(capsys, '--save_dir', str(save), *small_args(folder))
    assert_one_error_line(code, err, 'disagree')
    assert not (save / 'log.csv').exists()
