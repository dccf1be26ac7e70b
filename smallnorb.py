"""smallNORB: a reader for the NYU binary-matrix files and Efficient-CapsNet's preprocessing.

Files (raw or .gz) in --smallnorb_dir (default data/smallnorb/), from
https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/ :
    smallnorb-5x46789x9x18x6x2x96x96-training-{dat,cat,info}.mat
    smallnorb-5x01235x9x18x6x2x96x96-testing-{dat,cat,info}.mat
Format (little-endian): int32 magic (element type), int32 ndim, max(3, ndim) int32 dims
(unused ones present, normally 1), then the data in C order. NumPy only.
"""
import gzip
import os
import struct
import zlib

import numpy as np

from data_errors import DataError

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DIR = os.path.join(HERE, 'data', 'smallnorb')
URL = 'https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/'
FILES = {'train': 'smallnorb-5x46789x9x18x6x2x96x96-training-%s.mat',
         'test': 'smallnorb-5x01235x9x18x6x2x96x96-testing-%s.mat'}
CLASS_NAMES = ('animal', 'human', 'airplane', 'truck', 'car')
N_CLASS = len(CLASS_NAMES)

# element type by magic number; 0x1E3D4C52 ("packed matrix") has no documented layout
DTYPES = {0x1E3D4C51: np.dtype('<f4'), 0x1E3D4C53: np.dtype('<f8'), 0x1E3D4C54: np.dtype('<i4'),
          0x1E3D4C55: np.dtype('u1'), 0x1E3D4C56: np.dtype('<i2')}
PACKED = 0x1E3D4C52
MAX_NDIM = 16
MAX_BYTES = 2 ** 32  # the largest real file (training-dat) holds 447,897,600 bytes of data
CHUNK = 1 << 24

# Efficient-CapsNet (config.json, utils/pre_process_smallnorb.py)
SCALE, PATCH = 64, 48
MAX_DELTA, CONTRAST = 2.0, (0.5, 1.5)
# Efficient-CapsNet's smallNORB network (EscVM/Efficient-CapsNet,
# models/efficient_capsnet_graph_smallnorb.py), as capsulenet.EfficientCapsNet keywords;
# 48x48x2: 48 -> 21 -> 19 -> 17 -> 8, primary kernel 8 -> 1x1x128 -> 16 capsules. The decoder
# is named: capsulenet.DECODERS builds it (this module is NumPy only).
EFFICIENT = dict(conv_kernels=(7, 3, 3, 3), conv_strides=(2, 1, 1, 2), primary_kernel=8,
                 block='leaky_in', decoder='smallnorb_decoder')


# ---------------------------------------------------------------- binary-matrix reader
def _open(path):
    return gzip.open(path, 'rb') if path.endswith('.gz') else open(path, 'rb')


def _read_exactly(f, n, path, what):
    data = f.read(n)
    if len(data) < n:
        raise DataError('%s is truncated: it ends inside the %s (%d of %d bytes)'
                        % (path, what, len(data), n))
    return data


def read_header(f, path):
    """(dtype, shape, header bytes) from an open file at its start; checks magic, ndim, dims."""
    magic, ndim = struct.unpack('<ii', _read_exactly(f, 8, path, 'header'))
    magic &= 0xFFFFFFFF
    if magic == PACKED:
        raise DataError('%s is a packed matrix (magic 0x%08X), which this reader does not support'
                        % (path, magic))
    if magic not in DTYPES:
        swapped = struct.unpack('<I', struct.pack('>I', magic))[0]
        hint = '; it looks big-endian, the format is little-endian' if swapped in DTYPES else ''
        raise DataError('%s: wrong magic number 0x%08X, not a smallNORB binary matrix '
                        '(expected 0x1E3D4C51..0x1E3D4C56%s)' % (path, magic, hint))
    if not 0 <= ndim <= MAX_NDIM:
        raise DataError('%s: header declares %d dimensions (expected 0..%d)'
                        % (path, ndim, MAX_NDIM))
    n_dims = max(3, ndim)
    dims = struct.unpack('<%di' % n_dims, _read_exactly(f, 4 * n_dims, path, 'header'))
    shape = tuple(dims[:ndim])  # the unused dims of a 1- or 2-D matrix are padding
    if any(d < 0 for d in shape):
        raise DataError('%s: header declares negative dimensions %s' % (path, _shape_str(shape)))
    return DTYPES[magic], shape, 8 + 4 * n_dims


def _shape_str(shape):
    return 'x'.join(str(d) for d in shape) or 'scalar'


def _read_payload(f, size, path):
    """Exactly size bytes and then end of file; never reads more than size + 1 bytes."""
    buf = bytearray()
    while len(buf) <= size:  # <=: one byte beyond the declared size tells trailing data
        chunk = f.read(min(CHUNK, size + 1 - len(buf)))
        if not chunk:
            break
        buf += chunk
    if len(buf) != size:
        raise DataError('%s: header declares %d bytes of data, the file holds %s'
                        % (path, size, 'more (trailing data)' if len(buf) > size
                           else '%d (truncated)' % len(buf)))
    return buf


def read_matrix(path, max_bytes=MAX_BYTES):
    """One binary-matrix file (raw or .gz) -> np.ndarray of its shape and element type.

    The header is checked first; the declared size (Python ints, so no overflow) must match
    the file before any data is read, and gzip is inflated to that size + 1 byte at most.
    """
    try:
        with _open(path) as f:
            dtype, shape, header = read_header(f, path)
            size = dtype.itemsize * int(np.prod(shape, dtype=object))
            if size > max_bytes:
                raise DataError('%s: header declares %s %s (%d bytes), more than the %d-byte '
                                'limit (corrupt header?)' % (path, _shape_str(shape), dtype.name,
                                                             size, max_bytes))
            actual = None if path.endswith('.gz') else os.path.getsize(path)
            if actual is not None and actual != header + size:
                why = 'truncated' if actual < header + size else 'trailing data'
                raise DataError('%s: header declares %s %s (%d bytes with the header), the file '
                                'has %d bytes (%s)' % (path, _shape_str(shape), dtype.name,
                                                       header + size, actual, why))
            data = _read_payload(f, size, path)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError('cannot read %s: %s (corrupt or truncated gzip?)'
                        % (path, getattr(e, 'strerror', None) or e))
    return np.frombuffer(data, dtype=dtype).reshape(shape)


# ---------------------------------------------------------------- smallNORB splits
def _find(folder, name):
    for suffix in ('', '.gz'):
        path = os.path.join(folder, name + suffix)
        if os.path.isfile(path):
            return path
    return None


def file_paths(folder=None):
    """{split: {kind: path or None}} for kinds dat, cat, info; raises DataError naming every
    missing dat/cat file (info is optional: checked when present, unused otherwise)."""
    folder = folder or DEFAULT_DIR
    paths = {split: {kind: _find(folder, FILES[split] % kind) for kind in ('dat', 'cat', 'info')}
             for split in ('train', 'test')}
    missing = [FILES[s] % k for s in ('train', 'test') for k in ('dat', 'cat') if not paths[s][k]]
    if missing:
        raise DataError('smallNORB files missing in %s: %s (raw or .gz, from %s); put them there '
                        'or pass --smallnorb_dir (default data/smallnorb/)'
                        % (folder, ', '.join(missing), URL))
    return paths


def _check(array, path, dtype_kinds, ndim, what, inner=None):
    if array.dtype.kind not in dtype_kinds or array.ndim != ndim or \
            (inner is not None and array.shape[1:len(inner) + 1] != inner):
        raise DataError('%s: expected %s, got %s %s' % (path, what, array.dtype.name,
                                                        _shape_str(array.shape)))


def load_split(folder=None, split='train'):
    """One split: (x uint8 [N, H, W, 2] (the stereo pair as channels), y int64 [N] in 0..4,
    info int32 [N, 4] (instance, elevation, azimuth, lighting) or None without the file).

    N, H and W come from the files (real ones: 24300 x 96 x 96); the three must agree on N.
    """
    paths = file_paths(folder)[split]
    dat = read_matrix(paths['dat'])
    _check(dat, paths['dat'], 'u', 4, 'a uint8 matrix [N, 2, H, W] of stereo pairs', (2,))
    cat = read_matrix(paths['cat'])
    _check(cat, paths['cat'], 'iu', 1, 'an integer matrix [N] of category labels')
    if len(cat) != len(dat):
        raise DataError('smallNORB %s files disagree: %s holds %d image pairs, %s %d labels'
                        % (split, paths['dat'], len(dat), paths['cat'], len(cat)))
    if len(dat) == 0 or dat.shape[2] == 0 or dat.shape[3] == 0:
        raise DataError('%s holds no images (%s)' % (paths['dat'], _shape_str(dat.shape)))
    if cat.min() < 0 or cat.max() >= N_CLASS:
        raise DataError('%s: labels go from %d to %d, expected 0..%d'
                        % (paths['cat'], cat.min(), cat.max(), N_CLASS - 1))
    info = None
    if paths['info']:
        info = read_matrix(paths['info'])
        _check(info, paths['info'], 'iu', 2, 'an integer matrix [N, 4]', (4,))
        if len(info) != len(dat):
            raise DataError('smallNORB %s files disagree: %s holds %d image pairs, %s %d rows'
                            % (split, paths['dat'], len(dat), paths['info'], len(info)))
    x = np.ascontiguousarray(dat.transpose(0, 2, 3, 1))
    return x, cat.astype('int64'), info


def load_smallnorb(folder=None):
    """((x_train, y_train), (x_test, y_test)): x uint8 [N, H, W, 2] (real files: 24300 x 96 x 96),
    y int64 [N] in 0..4 (CLASS_NAMES), from folder (default data/smallnorb/)."""
    file_paths(folder)  # every missing file named in one error before anything is read
    x_train, y_train, _ = load_split(folder, 'train')
    x_test, y_test, _ = load_split(folder, 'test')
    return (x_train, y_train), (x_test, y_test)


# ---------------------------------------------------------------- preprocessing
def channel_stats(x, chunk=256):
    """(mean, std) float64 [C] of each channel over the whole split x [N, H, W, C] (population
    std, two passes over chunks so a uint8 split is never copied whole to float64)."""
    total = x.shape[0] * x.shape[1] * x.shape[2]
    mean = sum(x[i:i + chunk].sum(axis=(0, 1, 2), dtype='float64')
               for i in range(0, len(x), chunk)) / total
    var = sum(((x[i:i + chunk] - mean) ** 2).sum(axis=(0, 1, 2))
              for i in range(0, len(x), chunk)) / total
    std = np.sqrt(var)
    if np.any(std == 0):
        raise DataError('smallNORB: channel %d is constant over the split, it cannot be '
                        'standardised' % int(np.argmin(std)))
    return mean, std


def standardize(x, stats=None):
    """x [N, H, W, C] -> float32 (x - mean_c) / std_c, with channel stats over the whole split
    (Efficient-CapsNet's `standardize`) or the (mean, std) given."""
    mean, std = channel_stats(x) if stats is None else stats
    return ((x - mean) / std).astype('float32')


def bilinear_matrix(n_in, n_out):
    """[n_out, n_in] weights of 1-D bilinear resizing with half-pixel centres (tf.image.resize
    'bilinear', no antialiasing): output i samples input (i + 0.5) * n_in / n_out - 0.5."""
    src = np.clip((np.arange(n_out) + 0.5) * n_in / float(n_out) - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype('int64')
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), lo), 1 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return m


def resize(x, size=SCALE):
    """x [N, H, W, C] -> float32 [N, size, size, C], bilinear (as tf.image.resize)."""
    rows = bilinear_matrix(x.shape[1], size).astype('float32')
    cols = bilinear_matrix(x.shape[2], size).astype('float32')
    out = np.einsum('sh,nhwc->nswc', rows, x.astype('float32', copy=False), optimize=True)
    return np.einsum('tw,nswc->nstc', cols, out, optimize=True)


def prepare(x, size=SCALE, chunk=512):
    """A split as Efficient-CapsNet feeds it: uint8 [N, H, W, 2] -> float32 [N, size, size, 2],
    each channel standardised with its mean and std over the split, then resized (bilinear).

    Stats come from the full-resolution split as in Efficient-CapsNet; as each output pixel is
    a weighted mean (weights summing to 1), resizing chunk by chunk and standardising after is
    the same map, without a float copy of the whole 96x96 split.
    """
    mean, std = channel_stats(x)
    out = np.empty((len(x), size, size, x.shape[3]), dtype='float32')
    for i in range(0, len(x), chunk):
        out[i:i + chunk] = (resize(x[i:i + chunk], size) - mean) / std
    return out


def crop(x, top, left, patch=PATCH):
    """Patches x[i, top[i]:top[i]+patch, left[i]:left[i]+patch] of x [N, H, W, C]: [N, patch,
    patch, C] (one fancy index, no loop)."""
    n = len(x)
    top = np.broadcast_to(np.asarray(top, dtype='int64'), (n,))
    left = np.broadcast_to(np.asarray(left, dtype='int64'), (n,))
    rows = top[:, None] + np.arange(patch)
    cols = left[:, None] + np.arange(patch)
    return x[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def center_crop(x, patch=PATCH):
    """The test patches: the centre patch x patch of x [N, S, S, C] ((S - patch) // 2 from the
    top left, Efficient-CapsNet's `test_patches`) -> [N, patch, patch, C]."""
    top, left = (x.shape[1] - patch) // 2, (x.shape[2] - patch) // 2
    return x[:, top:top + patch, left:left + patch]


def augment(x, rng, patch=PATCH, max_delta=MAX_DELTA, contrast=CONTRAST):
    """Efficient-CapsNet's training augmentation, in its order, per image of x [B, S, S, C]:
    a uniform random patch x patch crop (same for both channels; tf.image.random_crop), a
    brightness delta in [-max_delta, max_delta) added to all pixels (random_brightness), then
    per channel (p - mean_c) * f + mean_c with f in [contrast) (random_contrast; mean over the
    patch). No clipping, as for float images in TF. -> (float32 [B, patch, patch, C], (top,
    left, delta, factor) each [B])."""
    b = len(x)
    top = rng.randint(0, x.shape[1] - patch + 1, size=b)
    left = rng.randint(0, x.shape[2] - patch + 1, size=b)
    delta = rng.uniform(-max_delta, max_delta, size=b)
    factor = rng.uniform(contrast[0], contrast[1], size=b)
    p = crop(x, top, left, patch).astype('float64') + delta[:, None, None, None]
    mean = p.mean(axis=(1, 2), keepdims=True)
    p = (p - mean) * factor[:, None, None, None] + mean
    return p.astype('float32'), (top, left, delta, factor)


def _rng(seed, *stream):
    return np.random.RandomState([int(seed) % 2 ** 32] + [int(s) for s in stream])


def epoch_order(n, seed, epoch):
    """The shuffled order of the n training pairs in an epoch: int [n], fixed by (seed, epoch)."""
    return _rng(seed, epoch).permutation(n)


def train_batch(x, y, index_array, seed, epoch, batch_index, patch=PATCH, max_delta=MAX_DELTA,
                contrast=CONTRAST):
    """A training batch, a pure function of (seed, epoch, batch_index): same inputs, same output.

    x: prepared split float32 [N, 64, 64, 2]; y: [N] (any label form, indexed as is);
    index_array: int [B] (e.g. epoch_order(N, seed, epoch)[b*B:(b+1)*B]) -> (images float32
    [B, 48, 48, 2] augmented as in `augment`, y[index_array]).
    """
    index_array = np.asarray(index_array, dtype='int64')
    rng = _rng(seed, epoch, batch_index + 1)  # (seed, epoch) alone is the epoch order
    images, _ = augment(x[index_array], rng, patch, max_delta, contrast)
    return images, np.asarray(y)[index_array]
