"""affNIST: the real-file reader on small .mat fixtures in the exact struct layout, pixel order,
the translated-MNIST and affNIST-style generators, and a tiny --dataset affnist CLI run."""
import json
import os
import zipfile

import numpy as np
import pytest

import affnist_loader as A
import batches as B
import training
import utils
from compat import UserError
from helpers import accuracy_from, run_main

pytestmark = pytest.mark.stack



@pytest.fixture(scope='module')
def mnist_test():
    return utils.load_mnist(train_samples=0, test_samples=60)[1]


def write_affnist_mat(path, images40, labels, order='C'):
    """A .mat as affNIST ships it: struct affNISTdata, image 1600xN uint8 (one image per column,
    flattened in `order`), label_int 1xN, label_one_of_n 10xN."""
    import scipy.io
    images40 = np.asarray(images40, dtype='uint8')
    flat = images40.reshape(len(images40), -1) if order == 'C' else \
        images40.transpose(0, 2, 1).reshape(len(images40), -1)
    labels = np.asarray(labels, dtype='uint8')
    struct = {'image': np.ascontiguousarray(flat.T),
              'label_int': labels[None, :],
              'label_one_of_n': np.eye(10, dtype='uint8')[labels].T}
    scipy.io.savemat(str(path), {'affNISTdata': struct})


def as_uint8(x):
    return np.round(x[..., 0] * 255).astype('uint8')


# ---------------------------------------------------------------- pixel order
def test_just_centered_image_i_is_mnist_i_padded_by_6(tmp_path, mnist_test):
    x28, y = mnist_test
    padded = A.pad_to_canvas(x28)
    write_affnist_mat(tmp_path / 'test.mat', as_uint8(padded), y.argmax(1), order='C')
    x, labels, description = A.load_affnist(str(tmp_path))
    assert x.shape == (60, 40, 40, 1) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 1
    np.testing.assert_array_equal(labels, y)
    assert A.check_just_centered(x, x28) and A.looks_just_centered(x)
    assert 'just centered' in description and 'pixel order C' in description
    # the other reading of the same file is a different (transposed) image set
    forced, _, _ = A.load_affnist(str(tmp_path / 'test.mat'), order='F')
    assert not A.check_just_centered(forced, x28)


def test_column_major_file_is_detected_and_read_upright(tmp_path, mnist_test):
    x28, y = mnist_test
    write_affnist_mat(tmp_path / 'test.mat', as_uint8(A.pad_to_canvas(x28)), y.argmax(1), order='F')
    x, _, description = A.load_affnist(str(tmp_path / 'test.mat'))
    assert 'pixel order F' in description
    assert A.check_just_centered(x, x28)
    row_major, _, _ = A.load_affnist(str(tmp_path / 'test.mat'), order='C')
    assert not A.check_just_centered(row_major, x28)


def test_upright_score_sign(mnist_test):
    digits = mnist_test[0][..., 0]
    assert A.upright_score(digits) > 0.1
    assert A.upright_score(digits.transpose(0, 2, 1)) < -0.1


# ---------------------------------------------------------------- folders, zips
def make_batches(folder, mnist_test, numbers=(1, 2, 10)):
    """test_batches/<k>.mat, each holding 20 translated MNIST digits (seed k)."""
    x28, y = mnist_test
    folder.mkdir(parents=True, exist_ok=True)
    expected = []
    for k in numbers:
        images = A.translated_mnist(x28[:20], 40, k)
        write_affnist_mat(folder / ('%d.mat' % k), as_uint8(images), y[:20].argmax(1))
        expected.append(as_uint8(images))
    return np.concatenate(expected), np.concatenate([y[:20]] * len(numbers))


def test_folder_of_batches_in_numeric_order_and_limit(tmp_path, mnist_test):
    images, labels = make_batches(tmp_path / 'test_batches', mnist_test)
    x, y, description = A.load_affnist(str(tmp_path))
    assert x.shape == (60, 40, 40, 1)
    np.testing.assert_array_equal(as_uint8(x), images)   # 1, 2, 10: not 1, 10, 2
    np.testing.assert_array_equal(y, labels)
    assert 'transformed' in description and '1.mat, 2.mat, 10.mat' in description
    x25, y25, _ = A.load_affnist(str(tmp_path), limit=25)
    assert len(x25) == 25 and np.array_equal(x25, x[:25])


def test_zip_as_downloaded_equals_folder(tmp_path, mnist_test):
    images, labels = make_batches(tmp_path / 'test_batches', mnist_test, numbers=(2, 1))
    archive = tmp_path / 'test_batches.zip'
    with zipfile.ZipFile(str(archive), 'w') as z:
        for k in (1, 2):
            z.write(str(tmp_path / 'test_batches' / ('%d.mat' % k)), 'test_batches/%d.mat' % k)
    from_zip, y_zip, _ = A.load_affnist(str(archive))
    from_dir, y_dir, _ = A.load_affnist(str(tmp_path / 'test_batches'))
    np.testing.assert_array_equal(from_zip, from_dir)
    np.testing.assert_array_equal(y_zip, y_dir)
    np.testing.assert_array_equal(as_uint8(from_zip[:20]), images[20:])  # 1.mat first


def test_struct_without_label_int_uses_one_of_n(tmp_path, mnist_test):
    import scipy.io
    labels = np.arange(10, dtype='uint8')
    scipy.io.savemat(str(tmp_path / 'a.mat'), {'affNISTdata': {
        'image': np.zeros((1600, 10), 'uint8'), 'label_one_of_n': np.eye(10, dtype='uint8')[labels].T}})
    _, y, _ = A.load_affnist(str(tmp_path / 'a.mat'))
    np.testing.assert_array_equal(y.argmax(1), labels)


@pytest.mark.parametrize('kind,message', [
    ('garbage', 'not a readable MATLAB'),
    ('no_struct', 'no affNISTdata struct'),
    ('no_image', 'lacks the image'),
    ('wrong_size', '784x3, expected 1600xN'),
    ('label_count', '3 images but 2 labels'),
    ('bad_labels', 'labels range'),
    ('bad_zip', 'cannot read zip'),
    ('empty_dir', 'no affNIST test files'),
    ('missing', 'not found'),
])
def test_bad_files_raise_one_clear_error(kind, message, tmp_path):
    import scipy.io
    path = tmp_path / 'test.mat'
    if kind == 'garbage':
        path.write_bytes(b'MATLAB? no' * 20)
    elif kind == 'no_struct':
        scipy.io.savemat(str(path), {'images': np.zeros((1600, 3), 'uint8')})
    elif kind == 'no_image':
        scipy.io.savemat(str(path), {'affNISTdata': {'label_int': np.zeros((1, 3), 'uint8')}})
    elif kind == 'wrong_size':
        scipy.io.savemat(str(path), {'affNISTdata': {'image': np.zeros((784, 3), 'uint8'),
                                                     'label_int': np.zeros((1, 3), 'uint8')}})
    elif kind == 'label_count':
        scipy.io.savemat(str(path), {'affNISTdata': {'image': np.zeros((1600, 3), 'uint8'),
                                                     'label_int': np.zeros((1, 2), 'uint8')}})
    elif kind == 'bad_labels':
        scipy.io.savemat(str(path), {'affNISTdata': {'image': np.zeros((1600, 3), 'uint8'),
                                                     'label_int': np.array([[0, 3, 12]], 'uint8')}})
    elif kind == 'bad_zip':
        path = tmp_path / 'test_batches.zip'
        path.write_bytes(b'PK\x03\x04 truncated')
    elif kind == 'empty_dir':
        path = tmp_path
    else:
        path = tmp_path / 'nowhere'
    with pytest.raises(UserError, match=message):
        A.load_affnist(str(path))


# ---------------------------------------------------------------- generators
def test_translated_mnist_places_whole_digits_seeded(mnist_test):
    x28 = mnist_test[0][:40]
    a, b = A.translated_mnist(x28, 40, 7), A.translated_mnist(x28, 40, 7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, A.translated_mnist(x28, 40, 8))
    assert a.shape == (40, 40, 40, 1)
    corners = set()
    for digit, canvas in zip(x28, a):
        # the digit is found intact at exactly one offset; nothing else is drawn
        hits = [(r, c) for r in range(13) for c in range(13)
                if np.array_equal(canvas[r:r + 28, c:c + 28], digit)
                and np.isclose(canvas.sum(), digit.sum())]
        assert hits
        corners.add(hits[0])
    assert len(corners) > 20  # positions really vary


def test_translated_batches_replace_digits_every_epoch(mnist_test):
    x28, y = mnist_test
    centred = A.pad_to_canvas(x28[:20])
    batches = B.ShiftedBatches(centred, y[:20], 10, 0, seed=3, augment=A.random_translation)
    (x1, y1), (t_y, t_x) = batches[0]
    assert x1.shape == (10, 40, 40, 1)
    np.testing.assert_array_equal(t_x, x1)
    np.testing.assert_array_equal(t_y, y1)
    np.testing.assert_allclose(x1.sum(axis=(1, 2, 3)), centred[batches.order[:10]].sum(axis=(1, 2, 3)),
                               rtol=1e-5)
    first = {i: x for i, x in zip(batches.order[:10], x1)}
    batches.on_epoch_end()
    moved = 0
    for start in (0, 10):
        (xb, _), _ = batches[start // 10]
        for i, x in zip(batches.order[start:start + 10], xb):
            moved += i in first and not np.array_equal(first[i], x)
    assert moved >= 7
    x_only, y_only = B.ClassifierBatches(batches)[0]
    assert x_only.shape == (10, 40, 40, 1) and y_only.shape == (10, 10)


def test_affine_matches_numpy_reference():
    """A 3x3 blob moved by affine_on_canvas lands where the matrix and placement put it."""
    canvas = np.zeros((40, 40))
    canvas[9:12, 24:27] = 1.0                      # centre (10, 25)
    theta = np.deg2rad(15)
    matrix = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]) @ \
        np.diag([1.1, 0.9])
    placement = np.array([0.25, 0.75])
    out = A.affine_on_canvas(canvas, matrix, placement)
    # reference: the ink box's corners through the matrix about the centre 19.5, then the shift
    c = 19.5
    corners = np.array([[8.5, 23.5], [8.5, 26.5], [11.5, 23.5], [11.5, 26.5]]) - c
    moved = corners @ matrix.T + c
    low, high = -0.5 - moved.min(0), 39.5 - moved.max(0)
    expected = matrix @ (np.array([10., 25.]) - c) + c + low + placement * (high - low)
    rr, cc = np.mgrid[:40, :40]
    centroid = np.array([(out * rr).sum(), (out * cc).sum()]) / out.sum()
    np.testing.assert_allclose(centroid, expected, atol=0.15)
    np.testing.assert_allclose(out.sum(), 9 * abs(np.linalg.det(matrix)), rtol=0.1)


def test_affnist_like_seeded_prefix_and_in_frame(mnist_test):
    x28 = mnist_test[0][:30]
    a = A.generate_affnist_like(x28, seed=0)
    np.testing.assert_array_equal(a, A.generate_affnist_like(x28, seed=0))
    np.testing.assert_array_equal(a[:10], A.generate_affnist_like(x28[:10], seed=0))
    assert not np.array_equal(a, A.generate_affnist_like(x28, seed=1))
    assert a.shape == (30, 40, 40, 1) and a.dtype == np.float32
    assert a.min() >= 0 and a.max() <= 1
    assert A.upright_score(a[..., 0]) > 0
    # digits changed shape (not just moved) but kept roughly their ink (scale 0.8-1.2 per axis)
    ratio = a.sum(axis=(1, 2, 3)) / x28.sum(axis=(1, 2, 3))
    assert np.all(ratio > 0.5) and np.all(ratio < 1.6)
    assert not any(np.array_equal(A.center_crop(a[i:i + 1])[0], x28[i]) for i in range(30))


def test_affnist_like_cached_npz_reused_and_rebuilt(tmp_path, mnist_test, monkeypatch):
    x28, y = mnist_test[0][:12], mnist_test[1][:12]
    x1, y1, label = A.affnist_like((x28, y), str(tmp_path), seed=0)
    assert label == A.GENERATED_LABEL == 'affNIST-style (generated)'
    cache = tmp_path / 'affnist_style_seed0_n12.npz'
    assert cache.is_file()

    def no_regeneration(*a, **k):
        raise AssertionError('cache not used')
    monkeypatch.setattr(A, 'generate_affnist_like', no_regeneration)
    x2, y2, _ = A.affnist_like((x28, y), str(tmp_path), seed=0)
    np.testing.assert_array_equal(x1, x2)
    monkeypatch.undo()
    cache.write_bytes(b'not an npz')
    x3, _, _ = A.affnist_like((x28, y), str(tmp_path), seed=0)
    np.testing.assert_array_equal(x1, x3)
    assert [p.name for p in tmp_path.iterdir()] == [cache.name]  # no temp files left


def test_expanded_mnist_loader_shapes_and_fixed_test_set(tmp_path):
    kwargs = dict(train_samples=50, test_samples=30, affnist_cache=str(tmp_path))
    (x_train, y_train), (x_test, y_test), affnist = A.expanded_mnist(**kwargs)
    assert x_train.shape == (50, 40, 40, 1) and y_train.shape == (50, 10)
    assert A.looks_just_centered(x_train)
    assert x_test.shape == (30, 40, 40, 1) and not A.looks_just_centered(x_test)
    (_, _), (x_test2, _), _ = A.expanded_mnist(**kwargs)
    np.testing.assert_array_equal(x_test, x_test2)
    x_aff, y_aff, description = affnist
    assert x_aff.shape == (30, 40, 40, 1) and description == A.GENERATED_LABEL
    np.testing.assert_array_equal(y_aff, y_test)


def test_early_stopping_callbacks_monitor_validation_accuracy():
    import capsulenet
    cnn = capsulenet.BaselineCNN((40, 40, 1), 10, channels=(4, 4, 2), units=(8, 8), pools=2)
    monitor = capsulenet.MODELS['cnn'].monitor
    stop, at = training.early_stopping_callbacks(monitor, patience=3, target=0.99)
    assert stop.monitor == 'val_accuracy' and stop.patience == 3 and at.monitor == 'val_accuracy'
    at.set_model(cnn)
    cnn.stop_training = False
    at.on_epoch_end(0, {'val_accuracy': 0.98})
    assert not cnn.stop_training
    at.on_epoch_end(1, {'val_accuracy': 0.992})
    assert cnn.stop_training


# ---------------------------------------------------------------- CLI
TINY = ['--dataset', 'affnist', '--train_samples', '300', '--test_samples', '200', '--epochs', '1',
        '--conv1_filters', '16', '--batch_size', '50', '--seed', '1']


def read_results(save_dir):
    with open(os.path.join(save_dir, 'affnist_results.json')) as f:
        return json.load(f)


@pytest.mark.train_cli
def test_cli_capsnet_generated_affnist(capsys, tmp_path):
    save = str(tmp_path / 'caps')
    code, out, err = run_main(capsys, '--model', 'capsnet', '--save_dir', save, '--affnist_cache',
                         str(tmp_path / 'cache'), '--stop_at_val_acc', '0.99', '--primary_channels', '4',
                         *TINY)
    assert code == 0, err[-3000:]
    r = read_results(save)
    assert r['affnist_set'] == 'affNIST-style (generated)' and r['affnist_generated'] is True
    assert r['affnist_images'] == 200 and r['expanded_mnist_images'] == 200
    # the report's figures are the run's: the printed test accuracy, whole images of 200
    assert abs(r['expanded_mnist_accuracy'] - accuracy_from(out)) < 5e-5
    assert r['affnist_accuracy'] * 200 == pytest.approx(round(r['affnist_accuracy'] * 200))
    assert '%.4f' % r['affnist_accuracy'] in out
    line = [l for l in out.splitlines() if 'expanded MNIST:' in l][0]
    assert 'affNIST-style (generated):' in line and 'capsnet' in line
    for name in ['log.csv', 'trained_model.h5', 'real_and_recon.png']:
        assert os.path.getsize(os.path.join(save, name)) > 0


@pytest.mark.train_cli
def test_cli_cnn_real_format_files_and_reload(capsys, tmp_path, mnist_test):
    make_batches(tmp_path / 'affnist' / 'test_batches', mnist_test, numbers=(1, 2))
    save = str(tmp_path / 'cnn')
    common = ['--model', 'cnn', '--affnist_dir', str(tmp_path / 'affnist')] + TINY
    code, out, err = run_main(capsys, '--save_dir', save, '--early_stopping', '2', *common)
    assert code == 0, err[-3000:]
    r = read_results(save)
    assert r['affnist_generated'] is False and r['affnist_set'].startswith('affNIST transformed (real')
    assert r['affnist_images'] == 40 and r['model'] == 'cnn'
    import pandas as pd
    assert 'val_accuracy' in pd.read_csv(os.path.join(save, 'log.csv')).columns
    # -t -w: the CNN has nothing to manipulate; it reloads and scores the same
    code, out2, err = run_main(capsys, '-t', '-w', os.path.join(save, 'trained_model.h5'),
                          '--save_dir', str(tmp_path / 'again'), *common)
    assert code == 0, err[-3000:]
    assert read_results(str(tmp_path / 'again'))['affnist_accuracy'] == r['affnist_accuracy']


@pytest.mark.train_cli
def test_cli_bad_affnist_dir_is_one_line_and_writes_nothing(capsys, tmp_path):
    (tmp_path / 'bad').mkdir()
    (tmp_path / 'bad' / 'test.mat').write_bytes(b'nope')
    save = tmp_path / 'out'
    code, out, err = run_main(capsys, '--save_dir', str(save), '--affnist_dir', str(tmp_path / 'bad'), *TINY)
    assert code == 2
    errors = [l for l in err.splitlines() if l.startswith('error:')]  # TensorFlow chatter aside
    assert len(errors) == 1 and 'test.mat' in errors[0] and 'not a readable MATLAB' in errors[0]
    assert err.strip().splitlines()[-1] == errors[0] and 'Traceback' not in err
    assert not (save / 'affnist_results.json').exists() and not (save / 'log.csv').exists()
