"""MNIST idx loading (both naming styles, gz or raw), shifts, image grids, log plots."""
import os

import numpy as np
import pytest

from compat import UserError
import utils
import helpers
from helpers import fake_mnist

pytestmark = pytest.mark.stack


@pytest.mark.parametrize('gz,style', [(True, 0), (False, 0), (False, 1), (True, 1)])
def test_load_mnist_formats(tmp_path, gz, style):
    arrays = fake_mnist(str(tmp_path), gz=gz, style=style)
    (x, y), (xt, yt) = utils.load_mnist(str(tmp_path))
    assert x.shape == (20, 28, 28, 1) and x.dtype == np.float32 and xt.shape == (10, 28, 28, 1)
    assert 0 <= x.min() and x.max() <= 1
    np.testing.assert_allclose(x[..., 0] * 255, arrays['train_images'], atol=1e-3)
    assert y.shape == (20, 10) and (y.argmax(1) == arrays['train_labels']).all()


def test_load_mnist_subsets_equal_slices_and_a_rewritten_file_is_read_again(tmp_path):
    folder = str(tmp_path)
    fake_mnist(folder, 20, 10)
    (x, y), (xt, yt) = utils.load_mnist(folder)
    (xs, ys), (xts, yts) = utils.load_mnist(folder, train_samples=7, test_samples=3)
    for whole, part in [(x[:7], xs), (y[:7], ys), (xt[:3], xts), (yt[:3], yts)]:
        assert part.dtype == whole.dtype and np.array_equal(part, whole)  # bit for bit
    xs[:] = 5.  # the caller owns its arrays: the next load is not changed by this
    assert np.array_equal(utils.load_mnist(folder, train_samples=7)[0][0], x[:7])
    # the same folder rewritten (other size): its new contents, not the ones read before
    arrays = fake_mnist(folder, 30, 10)
    (x2, _), _ = utils.load_mnist(folder)
    assert x2.shape[0] == 30
    np.testing.assert_allclose(x2[..., 0] * 255, arrays['train_images'], atol=1e-3)


def test_vendored_mnist_is_the_real_one():
    (x, y), (xt, yt) = utils.load_mnist()
    assert x.shape == (60000, 28, 28, 1) and xt.shape == (10000, 28, 28, 1)
    assert y.sum(0).min() > 5000 and list(yt[:5].argmax(1)) == [7, 2, 1, 0, 4]


@pytest.mark.parametrize('override,message', [
    ({'train_images': {'magic': 0x0801}}, 'magic'),
    ({'train_images': {'cut': 500}}, 'truncated'),
    ({'test_labels': {'array': np.zeros(9)}}, '10 images but 9 labels'),
    ({'train_images': {'array': np.zeros((20, 28, 27))}}, 'shape'),
    ({'train_labels': {'cut': 10 ** 6}}, 'empty or truncated'),
])
def test_bad_idx_files_raise_clear_errors(tmp_path, override, message):
    fake_mnist(str(tmp_path), gz=False, **override)
    with pytest.raises(UserError) as err:
        utils.load_mnist(str(tmp_path))
    assert message in str(err.value)


def test_corrupt_gzip_and_missing_files(tmp_path):
    fake_mnist(str(tmp_path))
    with open(str(tmp_path / 'train-images-idx3-ubyte.gz'), 'wb') as f:
        f.write(b'not gzip at all')
    with pytest.raises(UserError, match='cannot read'):
        utils.load_mnist(str(tmp_path))
    os.remove(str(tmp_path / 'train-images-idx3-ubyte.gz'))
    with pytest.raises(UserError, match='missing'):
        utils.load_mnist(str(tmp_path))


def test_random_shift_keeps_content_and_bounds():
    rng = np.random.RandomState(0)
    images = np.zeros((50, 28, 28, 1), dtype='float32')
    images[:, 10:18, 10:18] = 1
    shifted = utils.random_shift(images, 2, rng)
    assert shifted.shape == images.shape
    assert np.all(shifted.sum(axis=(1, 2, 3)) == 64)       # nothing falls off the canvas
    rows = np.where(shifted[:, :, :, 0].any(2))
    offsets = {r - 10 for r in rows[1][np.r_[True, np.diff(rows[0]) > 0]]}
    assert offsets <= set(range(-2, 3)) and len(offsets) > 1


def test_combine_images_layout():
    images = np.arange(6 * 2 * 2).reshape(6, 2, 2, 1).astype('float32')
    grid = utils.combine_images(images, width=3)
    assert grid.shape == (4, 6)
    np.testing.assert_array_equal(grid[2:4, 0:2], images[3, :, :, 0])


def test_plot_log_one_and_several(tmp_path):
    for name, acc in [('a', [0.9, 0.95]), ('b', [0.8, 0.99])]:
        with open(str(tmp_path / (name + '.csv')), 'w') as f:
            f.write('epoch,capsnet_accuracy,loss,val_capsnet_accuracy,val_loss\n')
            for e, a in enumerate(acc):
                f.write('%d,%f,%f,%f,%f\n' % (e, a, 1 - a, a, 1 - a))
    out = str(tmp_path / 'one.png')
    utils.plot_log(str(tmp_path / 'a.csv'), out)
    assert os.path.getsize(out) > 5000
    out2 = str(tmp_path / 'two.png')
    assert utils.main(['plot', str(tmp_path / 'a.csv'), str(tmp_path / 'b.csv'), '--out', out2]) == 0
    assert os.path.getsize(out2) > 5000
    with pytest.raises(UserError):
        utils.plot_log(str(tmp_path / 'missing.csv'), out)


@pytest.mark.parametrize('values', [
    [0.9, 0.95, 0.97],                               # a normal run
    [0.9, 1e308, -1e308, float('nan'), float('inf'), 0.97, 1.0],  # huge and non-finite
    [float('nan')] * 3,                              # nothing drawable at all
])
def test_plot_log_draws_normal_and_extreme_values(tmp_path, monkeypatch, values):
    """Test error per epoch (log scale) for several logs and the one-log figure: written
    whole, no traceback, for values at the edge of float64; never switching the backend."""
    import matplotlib
    monkeypatch.setattr(matplotlib, 'use', lambda *a, **k: pytest.fail('backend switched'))
    paths = []
    for name, scale in [('r3_recon', 1.), ('r1_norecon', -1.)]:
        paths.append(str(tmp_path / (name + '.csv')))
        with open(paths[-1], 'w') as f:
            f.write('epoch,capsnet_accuracy,loss,val_capsnet_accuracy,val_loss\n')
            for e, a in enumerate(values):
                f.write('%d,%r,%r,%r,%r\n' % (e, a, scale * a, a, 1 - a))
    for csvs in (paths, paths[:1]):
        out = str(tmp_path / ('%d.png' % len(csvs)))
        assert utils.main(['plot'] + csvs + ['--out', out]) == 0
        assert os.path.getsize(out) > 5000
        import matplotlib.image
        assert matplotlib.image.imread(out).std() > 0.01


def test_reading_stops_at_the_declared_size(tmp_path, monkeypatch):
    """A gzip bomb (a small header, 64 MB of zeros after it) is inflated only up to the size
    its header declares + 1 byte, not whole."""
    import gzip
    path = str(tmp_path / 'bomb-idx1-ubyte.gz')
    with gzip.open(path, 'wb') as f:
        f.write(helpers.idx_bytes(np.zeros(10)) + bytes(64 << 20))
    read = []
    real_upto = utils.read_upto
    monkeypatch.setattr(utils, 'read_upto', lambda f, limit: read.append(limit) or real_upto(f, limit))
    with pytest.raises(utils.UserError, match='trailing data'):
        utils.read_idx(path, 1)
    assert read == [8, 11]
