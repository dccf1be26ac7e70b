"""smallNORB reader and preprocessing, on small files generated here in the exact binary-matrix
format (the real files are not in the repo; nothing below is real smallNORB data)."""
import gzip
import io
import os
import struct

import numpy as np
import pytest

import smallnorb as sn
from data_errors import DataError

MAGIC = {'float32': 0x1E3D4C51, 'float64': 0x1E3D4C53, 'int32': 0x1E3D4C54, 'uint8': 0x1E3D4C55,
         'int16': 0x1E3D4C56}


def norb_bytes(array, magic=None, ndim=None, dims=None):
    """The bytes of a binary-matrix file holding array: int32 magic, int32 ndim, max(3, ndim)
    int32 dims (unused ones 1), then the data, all little-endian (header fields overridable)."""
    array = np.asarray(array)
    magic = MAGIC[array.dtype.name] if magic is None else magic
    ndim = array.ndim if ndim is None else ndim
    dims = list(array.shape) + [1] * (3 - array.ndim) if dims is None else dims
    dtype = array.dtype.newbyteorder('<')
    return (struct.pack('<Ii', magic, ndim) + struct.pack('<%di' % len(dims), *dims)
            + array.astype(dtype).tobytes())


def write_norb(path, array, gz=False, cut=0, extra=b'', **header):
    """Writes a binary-matrix file (gzipped if gz), less its last `cut` bytes, plus `extra`."""
    data = norb_bytes(array, **header)
    with (gzip.open if gz else open)(path, 'wb') as f:
        f.write(data[:len(data) - cut] + extra)
    return path


def name(split, kind, gz=False):
    return sn.FILES[split] % kind + ('.gz' if gz else '')


def fake_norb(folder, n_train=6, n_test=4, size=8, gz=False, skip=(), **overrides):
    """Generated (random, not real) smallNORB files in folder: dat uint8 [N, 2, size, size],
    cat int32 [N] in 0..4, info int32 [N, 4]; overrides['train-cat'] = write_norb kwargs (and
    'array') for one file. Returns {key: array}."""
    rng = np.random.RandomState(0)
    arrays = {}
    for split, n in (('train', n_train), ('test', n_test)):
        arrays[split + '-dat'] = rng.randint(0, 256, (n, 2, size, size)).astype('uint8')
        arrays[split + '-cat'] = (np.arange(n) % 5).astype('int32')
        arrays[split + '-info'] = rng.randint(0, 18, (n, 4)).astype('int32')
    for key, array in arrays.items():
        if key in skip:
            continue
        kwargs = dict(overrides.get(key, {}))
        split, kind = key.split('-')
        write_norb(os.path.join(folder, name(split, kind, gz)), kwargs.pop('array', array),
                   gz=gz, **kwargs)
    return arrays


def data_error(callable_, *args):
    """The one-line message of the DataError that callable_(*args) raises."""
    with pytest.raises(DataError) as info:
        callable_(*args)
    message = str(info.value)
    assert '\n' not in message and message
    return message


# ---------------------------------------------------------------- reader
@pytest.mark.parametrize('gz', [False, True])
@pytest.mark.parametrize('dtype', ['uint8', 'int32', 'int16', 'float32', 'float64'])
def test_read_matrix_round_trip(tmp_path, dtype, gz):
    rng = np.random.RandomState(1)
    for shape in [(5,), (3, 4), (2, 2, 3, 3), (2, 1, 2, 3, 2)]:  # ndim < 3 pads dims to 3
        array = (rng.uniform(-100, 100, shape)).astype(dtype)
        path = str(tmp_path / ('m%d.mat' % len(shape) + ('.gz' if gz else '')))
        write_norb(path, array, gz)
        out = sn.read_matrix(path)
        assert out.dtype == np.dtype(dtype) and out.shape == shape
        np.testing.assert_array_equal(out, array)


def test_header_of_a_label_file_has_three_dims(tmp_path):
    path = write_norb(str(tmp_path / 'cat.mat'), np.arange(7, dtype='int32'))
    assert os.path.getsize(path) == 20 + 28  # magic, ndim=1, dims (7, 1, 1), data
    with open(path, 'rb') as f:
        assert struct.unpack('<5i', f.read(20)) == (0x1E3D4C54, 1, 7, 1, 1)
        f.seek(0)
        dtype, shape, header = sn.read_header(f, path)
    assert (dtype, shape, header) == (np.dtype('<i4'), (7,), 20)


@pytest.mark.parametrize('gz', [False, True])
def test_load_smallnorb(tmp_path, gz):
    arrays = fake_norb(str(tmp_path), gz=gz)
    (x_train, y_train), (x_test, y_test) = sn.load_smallnorb(str(tmp_path))
    assert x_train.shape == (6, 8, 8, 2) and x_train.dtype == np.uint8
    assert x_test.shape == (4, 8, 8, 2) and y_test.shape == (4,)
    for c in (0, 1):  # channel c = camera c of the stereo pair
        np.testing.assert_array_equal(x_train[..., c], arrays['train-dat'][:, c])
        np.testing.assert_array_equal(x_test[..., c], arrays['test-dat'][:, c])
    np.testing.assert_array_equal(y_train, arrays['train-cat'])
    x, y, info = sn.load_split(str(tmp_path), 'test')
    np.testing.assert_array_equal(info, arrays['test-info'])


def test_non_square_images_and_no_info_files(tmp_path):
    dat = np.random.RandomState(2).randint(0, 256, (3, 2, 5, 7)).astype('uint8')
    fake_norb(str(tmp_path), skip=('train-info', 'test-info'),
              **{'train-dat': {'array': dat}, 'train-cat': {'array': np.int32([0, 4, 2])}})
    x, y, info = sn.load_split(str(tmp_path), 'train')
    assert x.shape == (3, 5, 7, 2) and info is None and list(y) == [0, 4, 2]


def test_missing_files_named_in_one_line(tmp_path):
    message = data_error(sn.load_smallnorb, str(tmp_path / 'nowhere'))
    for split in ('train', 'test'):
        for kind in ('dat', 'cat'):
            assert name(split, kind) in message
    assert '--smallnorb_dir' in message and 'data/smallnorb/' in message
    fake_norb(str(tmp_path), skip=('test-dat',))
    message = data_error(sn.load_smallnorb, str(tmp_path))
    assert name('test', 'dat') in message and name('train', 'dat') not in message


def bad_case(tmp_path, key, gz=False, **kwargs):
    """A fake folder with one bad file: (folder, that file's path)."""
    fake_norb(str(tmp_path), gz=gz, **{key: kwargs})
    split, kind = key.split('-')
    return str(tmp_path), os.path.join(str(tmp_path), name(split, kind, gz))


BAD = {
    'wrong magic': ('train-dat', False, dict(magic=0x00000803), 'wrong magic'),
    'big-endian magic': ('train-cat', True, dict(magic=0x544C3D1E), 'little-endian'),
    'packed matrix': ('train-dat', False, dict(magic=0x1E3D4C52), 'packed'),
    'truncated data': ('train-dat', False, dict(cut=5), 'truncated'),
    'truncated data gz': ('train-dat', True, dict(cut=5), 'truncated'),
    'trailing data': ('test-info', False, dict(extra=b'\0'), 'trailing data'),
    'trailing data gz': ('test-info', True, dict(extra=b'\0' * 9), 'trailing data'),
    'truncated header': ('train-cat', False, dict(cut=20 + 4 * 6 - 10), 'header'),
    'too many dims': ('train-dat', False, dict(ndim=17), 'dimensions'),
    'negative ndim': ('train-dat', True, dict(ndim=-1), 'dimensions'),
    'negative dim': ('train-dat', False, dict(dims=[6, 2, -8, -8]), 'negative'),
    'huge dims': ('train-dat', True, dict(dims=[2 ** 31 - 1] * 4), 'limit'),
    'dat/cat counts': ('train-cat', False, dict(array=np.int32([0, 1, 2, 3, 4])), 'disagree'),
    'dat/info counts': ('test-info', True, dict(array=np.zeros((5, 4), 'int32')), 'disagree'),
    'dat not uint8': ('train-dat', False, dict(array=np.zeros((6, 2, 8, 8), 'int32')), 'uint8'),
    'dat not a stereo pair': ('test-dat', False, dict(array=np.zeros((4, 3, 8, 8), 'uint8')),
                              'stereo'),
    'cat 2-D': ('train-cat', False, dict(array=np.zeros((6, 1), 'int32')), 'labels'),
    'labels out of range': ('test-cat', False, dict(array=np.int32([0, 1, 5, 2])), 'labels go'),
    'info 3 columns': ('train-info', False, dict(array=np.zeros((6, 3), 'int32')), '[N, 4]'),
}


@pytest.mark.parametrize('case', sorted(BAD))
def test_bad_files_raise_one_line_naming_the_file(tmp_path, case):
    key, gz, kwargs, expected = BAD[case]
    folder, path = bad_case(tmp_path, key, gz, **kwargs)
    message = data_error(sn.load_smallnorb, folder)
    assert expected in message, message
    assert os.path.basename(path) in message, message


def test_corrupt_gzip(tmp_path):
    fake_norb(str(tmp_path), skip=('train-cat',))
    with open(str(tmp_path / name('train', 'cat', gz=True)), 'wb') as f:
        f.write(b'\x1f\x8b\x08\x00' + b'garbage' * 10)
    message = data_error(sn.load_smallnorb, str(tmp_path))
    assert 'cannot read' in message and name('train', 'cat') in message


def test_gzip_is_inflated_to_the_declared_size_only(tmp_path, monkeypatch):
    # a small declared matrix followed by 16 MB of zeros (a ~16 kB gzip bomb)
    path = write_norb(str(tmp_path / 'bomb.mat.gz'), np.zeros(10, 'uint8'), gz=True,
                      extra=b'\0' * (16 << 20))
    read = []

    class Counting(io.RawIOBase):
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            data = self.f.read(n)
            read.append(len(data))
            return data

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()
    monkeypatch.setattr(sn, '_open', lambda p: Counting(gzip.open(p, 'rb')))
    assert 'more' in data_error(sn.read_matrix, path)
    assert sum(read) == 20 + 10 + 1


# ---------------------------------------------------------------- preprocessing
@pytest.fixture(scope='module')
def split():
    """Generated uint8 stereo pairs [6, 16, 16, 2] (the two channels on different scales)."""
    rng = np.random.RandomState(3)
    x = rng.randint(0, 256, (6, 16, 16, 2)).astype('uint8')
    x[..., 1] //= 4
    return x


def test_standardize_over_the_whole_split(split):
    mean, std = sn.channel_stats(split, chunk=4)
    np.testing.assert_allclose(mean, split.reshape(-1, 2).mean(axis=0))
    np.testing.assert_allclose(std, split.reshape(-1, 2).std(axis=0))
    z = sn.standardize(split)
    assert z.dtype == np.float32 and z.shape == split.shape
    np.testing.assert_allclose(z.reshape(-1, 2).mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(z.reshape(-1, 2).std(axis=0), 1, atol=1e-6)
    # not per image: single images keep their own offsets
    assert np.abs(z.mean(axis=(1, 2))).max() > 1e-3
    constant = np.zeros((2, 4, 4, 2), 'uint8')
    assert 'constant' in data_error(sn.standardize, constant)


def test_resize_is_half_pixel_bilinear():
    row = np.array([0., 2., 4., 6.])[None, :, None, None] * np.ones((1, 4, 4, 1))
    # 4 -> 2: outputs sample inputs 0.5 and 2.5 (half-pixel centres), the mean of each pair
    np.testing.assert_allclose(sn.resize(row, 2)[0, :, 0, 0], [1., 5.])
    # 2 -> 4 samples -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1)
    np.testing.assert_allclose(sn.resize(np.array([0., 4.]).reshape(1, 2, 1, 1) *
                                         np.ones((1, 2, 2, 1)), 4)[0, :, 0, 0], [0, 1, 3, 4])
    np.testing.assert_allclose(sn.bilinear_matrix(96, 64).sum(axis=1), 1)


def test_prepare_matches_scipy_zoom_of_standardized(split):
    from scipy import ndimage
    out = sn.prepare(split, size=12, chunk=4)
    ref = ndimage.zoom(sn.standardize(split).astype('float64'), (1, 12 / 16., 12 / 16., 1),
                       order=1, grid_mode=True, mode='nearest')
    assert out.shape == (6, 12, 12, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_center_crop(split):
    out = sn.center_crop(split, patch=10)
    np.testing.assert_array_equal(out, split[:, 3:13, 3:13])
    assert sn.center_crop(np.zeros((1, 64, 64, 2)), 48).shape == (1, 48, 48, 2)


def locate(patch, x):
    """(top, left) where patch [P, P, C] sits in image x [S, S, C]."""
    p, s = patch.shape[0], x.shape[0]
    hits = [(t, l) for t in range(s - p + 1) for l in range(s - p + 1)
            if np.array_equal(x[t:t + p, l:l + p], patch)]
    assert len(hits) == 1
    return hits[0]


def test_augment_crops_brightness_contrast(split):
    x = sn.standardize(split)
    rng = np.random.RandomState(4)
    # without brightness and contrast, each output is a crop of its own image at (top, left)
    plain, (top, left, _, _) = sn.augment(x, rng, patch=10, max_delta=0., contrast=(1., 1.))
    for i in range(len(x)):
        assert locate(plain[i], x[i]) == (top[i], left[i])
    seen = set()
    for s in range(60):
        images, (top, left, delta, factor) = sn.augment(x, np.random.RandomState(s), patch=10)
        assert images.shape == (6, 10, 10, 2)
        assert top.min() >= 0 and top.max() <= 6 and left.min() >= 0 and left.max() <= 6
        assert np.all(np.abs(delta) <= 2.) and np.all((factor >= .5) & (factor <= 1.5))
        seen.update(top)
        for i in range(2):  # NumPy reference, per channel: (p + d - m) * f + m, m = mean(p + d)
            p = x[i, top[i]:top[i] + 10, left[i]:left[i] + 10].astype('float64') + delta[i]
            m = p.mean(axis=(0, 1))
            np.testing.assert_allclose(images[i], (p - m) * factor[i] + m, atol=1e-5)
    assert seen == set(range(7))  # every crop position is drawn


def test_train_batch_is_pure(split):
    x = sn.prepare(split, size=12)
    y = np.arange(6) % 5
    order = sn.epoch_order(6, seed=2, epoch=1)
    assert sorted(order) == list(range(6))

    def batch(b, seed=2, epoch=1):
        return sn.train_batch(x, y, order[3 * b:3 * b + 3], seed, epoch, b, patch=8)
    first = [batch(0), batch(1)]
    for b in (1, 0, 1, 0):
        np.testing.assert_array_equal(batch(b)[0], first[b][0])
        np.testing.assert_array_equal(batch(b)[1], y[order[3 * b:3 * b + 3]])
    assert first[0][0].shape == (3, 8, 8, 2)
    assert not np.array_equal(batch(0)[0], batch(0, epoch=2)[0])
    assert not np.array_equal(batch(0)[0], batch(0, seed=3)[0])
    assert not np.array_equal(sn.train_batch(x, y, order[:3], 2, 1, 0, patch=8)[0],
                              sn.train_batch(x, y, order[:3], 2, 1, 1, patch=8)[0])


def test_data_modules_import_no_keras():
    import subprocess
    import sys
    code = ('import sys, multimnist, smallnorb, data_errors, cifar10, svhn, own_data; '
            'print([m for m in sys.modules if m.split(".")[0] in ("keras", "tensorflow", "jax", '
            '"torch", "compat", "utils")])')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.check_output([sys.executable, '-c', code], cwd=root, universal_newlines=True)
    assert out.strip() == '[]'
