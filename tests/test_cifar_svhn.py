"""CIFAR-10 and SVHN the paper's way (§7): the readers on small files written here in the real
formats (CIFAR-10's binary version: 3073-byte records, in a folder or the .tar.gz; SVHN's
cropped-digit MATLAB files), bad files as one line, the 24x24 patches, the "none-of-the-above"
routing class against NumPy, the two networks' sizes, ensemble testing against the NumPy
mean of two models' capsule lengths, and `--dataset cifar10 / svhn` end to end for one tiny
epoch. Every image here is GENERATED (random pixels): no figure of these runs says anything
about CIFAR-10 or SVHN."""
import io
import os
import tarfile

import numpy as np
import pytest

import capsulenet
import cifar10
import compat as C
import evaluation
import svhn
from data_errors import DataError
from h5weights import save_weights_h5
from helpers import accuracy_from, assert_one_error_line, run_main
from test_layers import np_routing, np_squash


# ---------------------------------------------------------------- writers (the real formats)
def cifar_records(x, y):
    """The bytes of a CIFAR-10 binary batch, written out as the format says: per image one
    label byte, then the red, green and blue 32x32 planes, each row by row."""
    out = bytearray()
    for image, label in zip(x, y):
        out.append(int(label))
        for channel in range(3):
            for row in range(32):
                out += bytes(bytearray(int(v) for v in image[row, :, channel]))
    return bytes(out)


def fake_cifar(folder, n=3, n_test=4, seed=0, archive=False, cut=None):
    """data_batch_1..5.bin (n records each) and test_batch.bin (n_test) of generated images in
    folder/cifar-10-batches-bin/, or (archive) packed as folder/cifar-10-binary.tar.gz.
    cut = (file name, bytes to drop). -> ((x_train, y_train), (x_test, y_test)) written."""
    rng = np.random.RandomState(seed)
    files = {}
    for name, count in [(f, n) for f in cifar10.TRAIN_FILES] + [(cifar10.TEST_FILE, n_test)]:
        x, y = rng.randint(0, 256, (count, 32, 32, 3)), rng.randint(0, 10, count)
        data = cifar_records(x, y)
        if cut and cut[0] == name:
            data = data[:len(data) - cut[1]]
        files[name] = (x, y, data)
    os.makedirs(folder, exist_ok=True)
    if archive:
        with tarfile.open(os.path.join(folder, cifar10.ARCHIVE), 'w:gz') as tar:
            for name, (_, _, data) in files.items():
                info = tarfile.TarInfo('%s/%s' % (cifar10.FOLDER, name))
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        os.makedirs(os.path.join(folder, cifar10.FOLDER), exist_ok=True)
        for name, (_, _, data) in files.items():
            with open(os.path.join(folder, cifar10.FOLDER, name), 'wb') as f:
                f.write(data)
    train = [files[f] for f in cifar10.TRAIN_FILES]
    return ((np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train])),
            files[cifar10.TEST_FILE][:2])


def fake_svhn(folder, n_train=8, n_test=5, seed=0, **override):
    """train_32x32.mat and test_32x32.mat of generated digits (X uint8 [32, 32, 3, N], y [N, 1]
    in 1..10, 10 for the digit 0), scipy.io.savemat (MATLAB v5). override[split]: the dict
    saved instead. -> {split: (X, y)} as written."""
    import scipy.io
    rng = np.random.RandomState(seed)
    os.makedirs(folder, exist_ok=True)
    written = {}
    for split, n in (('train', n_train), ('test', n_test)):
        X = rng.randint(0, 256, (32, 32, 3, n)).astype('uint8')
        y = (np.arange(n) % 10 + 1).reshape(-1, 1).astype('uint8')  # 1..10: every digit, 0 too
        scipy.io.savemat(os.path.join(folder, svhn.FILES[split]),
                         override.get(split, {'X': X, 'y': y}))
        written[split] = (X, y)
    return written


# ---------------------------------------------------------------- CIFAR-10 reader
@pytest.mark.parametrize('archive', [False, True])
def test_cifar10_reader_matches_the_written_records(tmp_path, archive):
    (x_train, y_train), (x_test, y_test) = fake_cifar(str(tmp_path), archive=archive)
    (got_x, got_y), (got_xt, got_yt) = cifar10.load_cifar10(str(tmp_path))
    assert got_x.shape == (15, 32, 32, 3) and got_x.dtype == np.uint8
    np.testing.assert_array_equal(got_x, x_train)
    np.testing.assert_array_equal(got_y, y_train)
    np.testing.assert_array_equal(got_xt, x_test)
    np.testing.assert_array_equal(got_yt, y_test)


def test_cifar10_byte_layout_by_hand():
    """Record bytes -> pixel: label at 0, then R plane, G plane, B plane, rows of 32."""
    record = np.zeros(cifar10.RECORD, dtype='uint8')
    record[0] = 7
    record[1 + 0 * 1024 + 2 * 32 + 5] = 11   # red, row 2, column 5
    record[1 + 1 * 1024 + 31 * 32 + 0] = 22  # green, row 31, column 0
    record[1 + 2 * 1024 + 0 * 32 + 31] = 33  # blue, row 0, column 31
    x, y = cifar10.parse_records(record.tobytes(), 'hand')
    assert y.tolist() == [7] and x.shape == (1, 32, 32, 3)
    assert (x[0, 2, 5, 0], x[0, 31, 0, 1], x[0, 0, 31, 2]) == (11, 22, 33)
    assert x.sum() == 66


def test_cifar10_also_reads_the_extracted_folder_itself(tmp_path):
    fake_cifar(str(tmp_path))
    (x, _), _ = cifar10.load_cifar10(str(tmp_path / cifar10.FOLDER))
    assert len(x) == 15


@pytest.mark.parametrize('case, message', [
    ('truncated', 'not a whole number of 3073-byte'),
    ('label', 'has label 12'),
    ('missing', 'CIFAR-10 files missing in'),
    ('corrupt_archive', 'cannot read'),
    ('archive_without_member', 'has no cifar-10-batches-bin/data_batch_2.bin'),
])
def test_cifar10_bad_files_are_one_line(tmp_path, case, message):
    folder = str(tmp_path)
    if case == 'truncated':
        fake_cifar(folder, cut=('data_batch_3.bin', 100))
    elif case == 'label':
        fake_cifar(folder)
        path = os.path.join(folder, cifar10.FOLDER, cifar10.TEST_FILE)
        data = bytearray(open(path, 'rb').read())
        data[cifar10.RECORD] = 12  # the second record's label
        open(path, 'wb').write(bytes(data))
    elif case == 'missing':
        fake_cifar(folder)
        os.remove(os.path.join(folder, cifar10.FOLDER, 'data_batch_5.bin'))
    elif case == 'corrupt_archive':
        fake_cifar(folder, archive=True)
        path = os.path.join(folder, cifar10.ARCHIVE)
        open(path, 'wb').write(open(path, 'rb').read()[:200])
    else:
        with tarfile.open(os.path.join(folder, cifar10.ARCHIVE), 'w:gz') as tar:
            info = tarfile.TarInfo('%s/data_batch_1.bin' % cifar10.FOLDER)
            tar.addfile(info, io.BytesIO(b''))
    with pytest.raises(DataError) as e:
        cifar10.load_cifar10(folder)
    assert message in str(e.value) and '\n' not in str(e.value)


def test_cifar10_missing_says_where_to_get_it_and_refuses_the_pickles(tmp_path):
    (tmp_path / 'cifar-10-batches-py').mkdir()
    with pytest.raises(DataError) as e:
        cifar10.load_cifar10(str(tmp_path))
    text = str(e.value)
    assert cifar10.URL in text and '--cifar10_dir' in text and 'Python version' in text


# ---------------------------------------------------------------- CIFAR-10 patches
def test_patches_random_in_training_centre_at_test():
    x = np.random.RandomState(0).randint(0, 256, (6, 32, 32, 3)).astype('uint8')
    y = np.arange(6)
    patches, labels = cifar10.train_batch(x, y, [4, 1, 2], seed=3, epoch=1, batch_index=2)
    assert patches.shape == (3, 24, 24, 3) and labels.tolist() == [4, 1, 2]
    for patch, i in zip(patches, [4, 1, 2]):  # each is one 24x24 window of its image
        windows = [(t, l) for t in range(9) for l in range(9)
                   if np.array_equal(x[i, t:t + 24, l:l + 24], patch)]
        assert windows, i
    again, _ = cifar10.train_batch(x, y, [4, 1, 2], seed=3, epoch=1, batch_index=2)
    np.testing.assert_array_equal(again, patches)  # a pure function of (seed, epoch, index)
    other, _ = cifar10.train_batch(x, y, [4, 1, 2], seed=3, epoch=2, batch_index=2)
    assert not np.array_equal(other, patches)
    np.testing.assert_array_equal(cifar10.center_crop(x), x[:, 4:28, 4:28])


# ---------------------------------------------------------------- SVHN reader
def test_svhn_reader_transposes_and_maps_10_to_0(tmp_path):
    written = fake_svhn(str(tmp_path), n_train=12, n_test=3)
    (x, y), (xt, yt) = svhn.load_svhn(str(tmp_path))
    X, labels = written['train']
    assert x.shape == (12, 32, 32, 3) and x.dtype == np.uint8
    for i in (0, 5, 11):
        np.testing.assert_array_equal(x[i], X[:, :, :, i])
    assert y.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]  # label 10 is the digit 0
    assert labels[9, 0] == 10 and len(xt) == 3 and yt.tolist() == [1, 2, 3]


@pytest.mark.parametrize('case, message', [
    ('keys', 'has no y'),
    ('shape', 'expected uint8 [32, 32, 3, N]'),
    ('labels', 'expected 1..10'),
    ('count', 'expected 4 labels'),
    ('not_mat', 'not a readable MATLAB'),
    ('missing', 'SVHN files missing in'),
])
def test_svhn_bad_files_are_one_line(tmp_path, case, message):
    folder = str(tmp_path)
    X = np.zeros((32, 32, 3, 4), 'uint8')
    y = np.ones((4, 1), 'uint8')
    bad = {'keys': {'X': X, 'labels': y}, 'shape': {'X': X[:16], 'y': y},
           'labels': {'X': X, 'y': y * 11}, 'count': {'X': X, 'y': y[:3]}}
    fake_svhn(folder, **({'test': bad[case]} if case in bad else {}))
    if case == 'not_mat':
        open(os.path.join(folder, svhn.FILES['test']), 'wb').write(b'not a mat file' * 20)
    if case == 'missing':
        os.remove(os.path.join(folder, svhn.FILES['train']))
    with pytest.raises(DataError) as e:
        svhn.load_svhn(folder)
    text = str(e.value)
    assert message in text and '\n' not in text
    if case == 'missing':
        assert svhn.URL in text and '--svhn_dir' in text


# ---------------------------------------------------------------- the networks
def np_leaky_routing(u, W, routings):
    """Procedure 1 with the official leaky routing written out: each input capsule's softmax
    runs over [0, b_i1 .. b_iJ] and the 0 logit's share is dropped. u [B, I, Din]."""
    u_hat = np.einsum('jiod,bid->bjio', W, u)
    b = np.zeros(u_hat.shape[:3])
    for r in range(routings):
        logits = np.concatenate([np.zeros_like(b[:, :1]), b], axis=1)  # [B, J + 1, I]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        c = (e / e.sum(axis=1, keepdims=True))[:, 1:]
        v = np_squash(np.einsum('bji,bjio->bjo', c, u_hat))
        if r < routings - 1:
            b = b + np.einsum('bjio,bjo->bji', u_hat, v)
    return v


@pytest.mark.stack
@pytest.mark.parametrize('routings', [1, 3])
def test_leaky_routing_matches_numpy(routings):
    import capsulelayers as CL
    from compat import layers, models
    rng = np.random.RandomState(routings)
    u = rng.normal(size=(3, 7, 4)).astype('float32')
    W = rng.normal(size=(5, 7, 6, 4)).astype('float32')
    C.clear_session(free_memory=False)
    layer = CL.CapsuleLayer(num_capsule=5, dim_capsule=6, routings=routings, leaky=True)
    inp = layers.Input(shape=(7, 4))
    model = models.Model(inp, layer(inp))
    layer.set_weights([W])
    v = model.predict(u, verbose=0)
    want = np_leaky_routing(u.astype('float64'), W.astype('float64'), routings)
    np.testing.assert_allclose(v, want, rtol=1e-4, atol=1e-6)
    # the leak matters: Procedure 1's plain softmax gives other capsules
    assert not np.allclose(np_routing(u.astype('float64'), W.astype('float64'), routings),
                           want, atol=1e-4)
    assert CL.CapsuleLayer.from_config(layer.get_config()).leaky is True


def conv_params(kernel, c_in, c_out):
    return kernel * kernel * c_in * c_out + c_out


@pytest.mark.stack
def test_the_papers_cifar10_and_svhn_networks():
    """--dataset cifar10: 24x24x3 -> conv1 256@9x9 -> 16x16 -> 64 primary capsule types 9x9
    stride 2 -> 4x4x64 = 1024 capsules of 8-D -> 10 x 16-D, leaky routing. --dataset svhn:
    32x32x3 -> conv1 64@9x9 -> 24x24 -> 16 types of 6-D stride 2 -> 8x8x16 = 1024 capsules ->
    10 x 8-D. Parameter counts by the arithmetic of each layer."""
    C.clear_session(free_memory=False)
    train_model, _, _ = capsulenet.build_models('capsnet', (24, 24, 3), 10, 'cifar10')
    caps = train_model.get_layer('digitcaps')
    assert caps.leaky and caps.routings == 3 and caps.input_num_capsule == 4 * 4 * 64
    assert capsulenet.trainable_count(train_model) == (
        conv_params(9, 3, 256) + conv_params(9, 256, 64 * 8) + 10 * 1024 * 16 * 8)
    C.clear_session(free_memory=False)
    train_model, _, _ = capsulenet.build_models('capsnet', (32, 32, 3), 10, 'svhn')
    caps = train_model.get_layer('digitcaps')
    assert not caps.leaky and (caps.input_num_capsule, caps.input_dim_capsule) == (1024, 6)
    assert caps.dim_capsule == 8
    assert capsulenet.trainable_count(train_model) == (
        conv_params(9, 3, 64) + conv_params(9, 64, 16 * 6) + 10 * 1024 * 8 * 6)
    C.clear_session(free_memory=False)  # flags given override the recipe
    train_model, _, _ = capsulenet.build_models('capsnet', (24, 24, 3), 10, 'cifar10',
                                                primary_channels=2)
    assert train_model.get_layer('digitcaps').input_num_capsule == 4 * 4 * 2


# ---------------------------------------------------------------- ensembles
@pytest.mark.stack
def test_ensemble_is_the_mean_of_the_models_lengths(tmp_path):
    x = np.random.RandomState(0).uniform(size=(6, 24, 24, 3)).astype('float32')
    C.clear_session(free_memory=False)
    options = dict(conv1_filters=8, primary_channels=2, primary_dim=4, digit_dim=4,
                   decoder_units=(8, 8))
    train_model, eval_model, _ = capsulenet.build_models('capsnet', (24, 24, 3), 10, 'cifar10',
                                                         **options)
    paths, lengths = [], []
    for i in range(2):  # two different models: random weights each
        weights = [np.random.RandomState(i).normal(0, 0.2, w.shape).astype('float32')
                   for w in train_model.get_weights()]
        train_model.set_weights(weights)
        paths.append(str(tmp_path / ('m%d.h5' % i)))
        save_weights_h5(train_model, paths[-1])
        lengths.append(eval_model.predict(x, verbose=0)[0])
    assert not np.allclose(lengths[0], lengths[1])
    from h5weights import load_weights_h5
    mean, recons, each = evaluation.ensemble_predict(
        eval_model, 'capsule', x, 3, lambda p: load_weights_h5(train_model, p), paths)
    np.testing.assert_allclose(mean, (lengths[0] + lengths[1]) / 2, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(each[1], lengths[1], rtol=1e-5, atol=1e-7)
    assert recons[0].shape == (6, 24, 24, 3)


# ---------------------------------------------------------------- the command line
TINY_CAPSNET = ['--conv1_filters', '8', '--primary_channels', '2', '--primary_dim', '4',
                '--digit_dim', '4', '--epochs', '1', '--batch_size', '4', '--seed', '1']


@pytest.mark.end_to_end
@pytest.mark.train_cli
@pytest.mark.parametrize('dataset', ['cifar10', 'svhn'])
def test_cli_one_tiny_epoch_on_generated_files_then_an_ensemble(tmp_path, capsys, dataset):
    """Generated files in the real formats: train one tiny epoch, then -t with two -w."""
    data = tmp_path / 'data'
    if dataset == 'cifar10':
        fake_cifar(str(data), n=2, n_test=6, archive=True)
    else:
        fake_svhn(str(data), n_train=10, n_test=6)
    flags = ['--dataset', dataset, '--%s_dir' % dataset, str(data)] + TINY_CAPSNET
    code, out, err = run_main(capsys, '--save_dir', str(tmp_path / 'a'), *flags)
    assert code == 0, err[-3000:]
    assert 'builds its own --model capsnet network' in out and 'on 6 images' in out
    size = 24 if dataset == 'cifar10' else 32
    assert 'Testing on 6 test images' in out
    code, out, err = run_main(capsys, '--save_dir', str(tmp_path / 'b'), '--seed', '2', *flags[:-2])
    assert code == 0, err[-3000:]
    weights = [str(tmp_path / d / 'trained_model.h5') for d in 'ab']
    code, out, err = run_main(capsys, '-t', '-w', weights[0], '-w', weights[1], '--save_dir',
                              str(tmp_path / 't'), *flags)
    assert code == 0, err[-3000:]
    assert 'Ensemble of 2 models' in out and out.count('  member ') == 2
    assert 0 <= accuracy_from(out) <= 1
    import matplotlib.image
    recon = matplotlib.image.imread(str(tmp_path / 't' / 'real_and_recon.png'))
    assert recon.shape[0] == 2 * size  # 6 inputs + 6 reconstructions, 10 a row: 2 rows


@pytest.mark.end_to_end
def test_cli_missing_files_and_ensembles_outside_testing_are_one_line(tmp_path, capsys):
    code, out, err = run_main(capsys, '--dataset', 'svhn', '--svhn_dir', str(tmp_path / 'none'),
                              '--save_dir', str(tmp_path / 'out'), *TINY_CAPSNET)
    assert_one_error_line(code, err, 'SVHN files missing in')
    assert svhn.URL in err
    code, out, err = run_main(capsys, '--dataset', 'cifar10', '--cifar10_dir',
                              str(tmp_path / 'none'), '--save_dir', str(tmp_path / 'out'))
    assert_one_error_line(code, err, 'CIFAR-10 files missing in')
    assert cifar10.URL in err
    code, out, err = run_main(capsys, '-w', 'a.h5', '-w', 'b.h5', '--save_dir',
                              str(tmp_path / 'out'))
    assert_one_error_line(code, err, 'is for testing (-t)')
    code, out, err = run_main(capsys, '--dataset', 'cifar10', '--shift_fraction', '0.1',
                              '--save_dir', str(tmp_path / 'out'))
    assert_one_error_line(code, err, '--shift_fraction does not apply')
