"""affNIST for the CapsNet §5.2 experiment: real-file reader and the two MNIST-derived sets.

- load_affnist(path): the real affNIST MATLAB files (struct `affNISTdata`, fields `image`
  1600xN uint8 one image per column, `label_int` 1xN, `label_one_of_n` 10xN), given as a
  folder, one .mat, or the downloaded .zip files -> float32 [N, 40, 40, 1] in [0, 1] and
  one-hot [N, 10].
- translated_mnist(digits, canvas, rng): each 28x28 digit placed at a uniform random
  position on a black canvas (the paper's translated / "expanded" MNIST); random_translation
  re-places centred training digits so in every batch (batches.ShiftedBatches' augment).
- affnist_like(...): when the real set is absent, a seeded affNIST-STYLE test set made from
  the MNIST test digits with random affine transforms, cached as .npz. Its results are
  always labelled GENERATED_LABEL, never "affNIST".

Pixel order. The files hold one 40x40 image per column of `image`. Most public loaders read
column i as a row-major (C-order) 40x40 image; a few add a transpose. Which is right is
settled per file, not assumed: decode_images tries both orders and keeps the one in which the
digits stand upright (MNIST digits are taller than wide, so the mean over images of the
vertical minus the horizontal second moment of the ink is positive), and on the "just
centered" set, image i must equal MNIST image i padded by 6 px (check_just_centered).
"""
import hashlib
import io
import os
import re
import zipfile
import zlib

import numpy as np

from safeio import UserError, atomic_write
import utils

CANVAS = 40
DIGIT = 28
N_PIXELS = CANVAS * CANVAS
GENERATED_LABEL = 'affNIST-style (generated)'
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_AFFNIST_DIR = os.path.join(HERE, 'data', 'affnist')

# affNIST's transform ranges as recalled (the page's table could not be read): rotation
# +-20 degrees, shear +-0.2, each axis scaled by [0.8, 1.2], then a random translation that
# keeps the digit inside the 40x40 frame.
AFFINE_RANGES = {'rotation_deg': 20.0, 'shear': 0.2, 'scale': (0.8, 1.2)}
# the most a .mat member of a zip may inflate to, as smallnorb.MAX_BYTES: the largest affNIST
# file, training_and_validation.mat, holds 1,920,000 images of 1600 bytes (3.07e9 bytes)
MAX_MAT_BYTES = 2 ** 32


# ---------------------------------------------------------------- real files
def _read_struct(source, name):
    """(image 1600xN uint8, labels [N] int) from one .mat given as a path or a file object."""
    import scipy.io
    try:
        mat = scipy.io.loadmat(source)
    except Exception as e:  # scipy raises ValueError, TypeError, MatReadError... on bad files
        raise UserError('%s is not a readable MATLAB .mat file (%s)' % (name, e))
    if 'affNISTdata' not in mat:
        raise UserError('%s has no affNISTdata struct (variables: %s)'
                        % (name, ', '.join(k for k in mat if not k.startswith('__')) or 'none'))
    struct = mat['affNISTdata']
    fields = struct.dtype.names or ()
    if 'image' not in fields or not ({'label_int', 'label_one_of_n'} & set(fields)):
        raise UserError('%s: affNISTdata lacks the image / label_int fields (has: %s)'
                        % (name, ', '.join(fields) or 'none'))
    image = np.asarray(struct['image'].flat[0])
    if image.ndim != 2 or image.shape[0] != N_PIXELS:
        raise UserError('%s: affNISTdata.image has shape %s, expected 1600xN (40x40 images '
                        'in columns)' % (name, 'x'.join(map(str, image.shape))))
    if 'label_int' in fields:
        labels = np.asarray(struct['label_int'].flat[0]).reshape(-1)
    else:
        labels = np.argmax(np.asarray(struct['label_one_of_n'].flat[0]), axis=0)
    if labels.size != image.shape[1]:
        raise UserError('%s: %d images but %d labels' % (name, image.shape[1], labels.size))
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise UserError('%s: labels range %d..%d, expected 0..9' % (name, labels.min(), labels.max()))
    return image, labels.astype('int64')


def _batch_key(name):
    """Sort key putting 2.mat before 10.mat."""
    digits = re.findall(r'\d+', os.path.basename(name))
    return (int(digits[-1]) if digits else -1, name)


def _read_member(archive, member, path, max_bytes=None):
    """The bytes of one zip member, refused (UserError) when it declares or inflates to more
    than max_bytes (default MAX_MAT_BYTES): read in chunks up to that + 1 byte, so a zip bomb
    never inflates further, whatever its header says."""
    max_bytes = MAX_MAT_BYTES if max_bytes is None else max_bytes
    declared = archive.getinfo(member).file_size
    if declared > max_bytes:
        raise UserError('%s in zip %s declares %d bytes, more than the %d-byte limit of an '
                        'affNIST .mat file (corrupt or not affNIST?)' % (member, path, declared,
                                                                       max_bytes))
    with archive.open(member) as f:
        data = utils.read_upto(f, max_bytes + 1)
    if len(data) > max_bytes:
        raise UserError('%s in zip %s inflates to more than the %d-byte limit of an affNIST '
                        '.mat file (corrupt or not affNIST?)' % (member, path, max_bytes))
    return data


def _mat_sources(path, split):
    """[(name, opener)] for the .mat files of `split` ('test' or 'training_and_validation')
    in a folder, a .mat, or a .zip; opener() returns a path or a file object for loadmat."""
    if os.path.isfile(path) and path.lower().endswith('.mat'):
        return [(path, lambda p=path: p)]
    if os.path.isfile(path) and path.lower().endswith('.zip'):
        try:
            archive = zipfile.ZipFile(path)
            names = [n for n in archive.namelist() if n.lower().endswith('.mat')]
        except (zipfile.BadZipFile, OSError) as e:
            raise UserError('cannot read zip %s: %s' % (path, e))
        if not names:
            raise UserError('zip %s holds no .mat files' % path)

        def opener(member):
            try:
                return io.BytesIO(_read_member(archive, member, path))
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
                raise UserError('cannot read %s from zip %s: %s' % (member, path, e))
        return [('%s:%s' % (path, n), lambda n=n: opener(n)) for n in sorted(names, key=_batch_key)]
    if os.path.isdir(path):
        for candidate in ('%s_batches' % split, '%s_batches.zip' % split, '%s.mat' % split,
                          '%s.mat.zip' % split):
            full = os.path.join(path, candidate)
            if os.path.exists(full):
                return _mat_sources(full, split)
        numbered = sorted((f for f in os.listdir(path) if re.match(r'^\d+\.mat$', f)), key=_batch_key)
        if numbered:
            return [(os.path.join(path, f), lambda p=os.path.join(path, f): p) for f in numbered]
        raise UserError('no affNIST %s files in %s (looked for %s_batches/, %s_batches.zip, '
                        '%s.mat, %s.mat.zip, N.mat)' % ((split, path) + (split,) * 4))
    raise UserError('affNIST path not found or not a folder/.mat/.zip: %s' % path)


def decode_images(image, order='auto'):
    """affNISTdata.image [1600, N] -> ([N, 40, 40] uint8, order used).

    order 'C': column i read row-major (image.T.reshape(N, 40, 40)); 'F': column-major (the
    transpose); 'auto': both tried, the one with upright digits kept (upright_score).
    """
    rows = np.ascontiguousarray(image.T).reshape(-1, CANVAS, CANVAS)
    if order == 'auto':
        order = 'C' if upright_score(rows) >= 0 else 'F'
    if order == 'F':
        rows = rows.transpose(0, 2, 1)
    elif order != 'C':
        raise ValueError('order must be C, F or auto')
    return rows, order


def upright_score(images):
    """Mean over images of (vertical - horizontal) second central moment of the ink, divided
    by the total: > 0 for MNIST-like digits (taller than wide), < 0 for transposed ones.

    images: [N, H, W] (any range) -> float.
    """
    x = np.asarray(images, dtype='float64')[:2000]
    mass = x.sum(axis=(1, 2))
    keep = mass > 0
    if not keep.any():
        return 0.0
    x, mass = x[keep], mass[keep]
    r = np.arange(x.shape[1])[None, :, None]
    c = np.arange(x.shape[2])[None, None, :]
    mr = (x * r).sum(axis=(1, 2)) / mass
    mc = (x * c).sum(axis=(1, 2)) / mass
    vr = (x * (r - mr[:, None, None]) ** 2).sum(axis=(1, 2)) / mass
    vc = (x * (c - mc[:, None, None]) ** 2).sum(axis=(1, 2)) / mass
    return float(np.mean((vr - vc) / (vr + vc + 1e-9)))


def load_affnist(path, split='test', limit=None, order='auto'):
    """Reads real affNIST .mat files -> (x float32 [N, 40, 40, 1] in [0, 1], y one-hot [N, 10],
    description).

    path: a folder (with test_batches/, test_batches.zip, test.mat or test.mat.zip for
    split 'test'; training_and_validation* for 'training_and_validation'; or 1.mat .. 32.mat
    directly), a single .mat, or a downloaded .zip. Batches are read in numeric order until
    `limit` images are in hand. Bad files raise UserError naming the file.
    """
    images, labels, orders, names = [], [], set(), []
    total = 0
    for name, opener in _mat_sources(path, split):
        image, label = _read_struct(opener(), name)
        decoded, used = decode_images(image, order)
        images.append(decoded)
        labels.append(label)
        orders.add(used)
        names.append(os.path.basename(name.split(':')[-1]))
        total += len(label)
        if limit is not None and total >= limit:
            break
    x = np.concatenate(images)[:limit]
    y = np.concatenate(labels)[:limit]
    kind = 'just centered' if looks_just_centered(x) else 'transformed'
    description = 'affNIST %s (real: %s, %d images, pixel order %s)' % (
        kind, ', '.join(names[:3]) + (', ...' if len(names) > 3 else ''), len(x), '/'.join(sorted(orders)))
    return (x.reshape(-1, CANVAS, CANVAS, 1).astype('float32') / 255.,
            utils.to_categorical(y, 10), description)


def find_real_affnist(directory):
    """True where `directory` holds affNIST test files load_affnist can try."""
    if not directory or not os.path.isdir(directory):
        return False
    try:
        _mat_sources(directory, 'test')
    except UserError:
        return False
    return True


def looks_just_centered(images, border=6):
    """True when every image's `border`-pixel frame is empty (the just-centered version)."""
    x = np.asarray(images)
    if x.ndim == 4:
        x = x[..., 0]
    if len(x) < 2:
        return False
    frame = np.ones(x.shape[1:], dtype=bool)
    frame[border:-border, border:-border] = False
    return bool(np.all(x[:, frame] == 0))


def check_just_centered(x40, mnist28, tolerance=1.5 / 255):
    """True when image i of the just-centered set equals MNIST image i padded by 6 pixels,
    for every i available in both. x40: [N, 40, 40, 1]; mnist28: [M, 28, 28, 1] in [0, 1]."""
    n = min(len(x40), len(mnist28))
    return bool(np.all(np.abs(x40[:n] - pad_to_canvas(mnist28[:n])) <= tolerance))


# ---------------------------------------------------------------- translated MNIST
def pad_to_canvas(digits, canvas=CANVAS):
    """Centres [N, h, w, 1] digits on a black [N, canvas, canvas, 1] canvas (28 -> 40: 6 px)."""
    h, w = digits.shape[1:3]
    top, left = (canvas - h) // 2, (canvas - w) // 2
    return np.pad(digits, ((0, 0), (top, canvas - h - top), (left, canvas - w - left), (0, 0)))


def center_crop(images, size=DIGIT):
    """[N, H, W, C] -> the central [N, size, size, C] box (the digit of a padded image)."""
    h, w = images.shape[1:3]
    top, left = (h - size) // 2, (w - size) // 2
    return images[:, top:top + size, left:left + size]


def translated_mnist(digits, canvas=CANVAS, rng=None):
    """Each digit [h, w] placed at a uniform random integer position on a black canvas.

    digits: [N, h, w, 1] (28x28 MNIST); rng: np.random.RandomState or seed ->
    [N, canvas, canvas, 1]. With 28 -> 40 there are 13 x 13 = 169 positions per digit, the
    official `--shift=6 --pad=6` grid.
    """
    if not isinstance(rng, np.random.RandomState):
        rng = np.random.RandomState(rng)
    n, h, w = digits.shape[:3]
    if h > canvas or w > canvas:
        raise UserError('digits of %dx%d do not fit a %dx%d canvas' % (h, w, canvas, canvas))
    top = rng.randint(0, canvas - h + 1, size=n)
    left = rng.randint(0, canvas - w + 1, size=n)
    out = np.zeros((n, canvas, canvas) + digits.shape[3:], dtype=digits.dtype)
    for i in range(n):
        out[i, top[i]:top[i] + h, left[i]:left[i] + w] = digits[i]
    return out


def random_translation(x, rng, digit_size=DIGIT):
    """The training augmentation of --dataset affnist (batches.ShiftedBatches' augment):
    digits centred on a canvas x [B, 40, 40, 1] -> each digit's central digit_size box
    re-placed at a fresh uniform random position of the canvas [B, 40, 40, 1]."""
    return translated_mnist(center_crop(x, digit_size), x.shape[1], rng)


# ---------------------------------------------------------------- affNIST-style set
def random_affines(n, rng, ranges=AFFINE_RANGES):
    """n forward 2x2 matrices (row, col coordinates): rotation @ shear @ diag(scale_r, scale_c)."""
    theta = np.deg2rad(rng.uniform(-ranges['rotation_deg'], ranges['rotation_deg'], n))
    shear = rng.uniform(-ranges['shear'], ranges['shear'], n)
    scale = rng.uniform(ranges['scale'][0], ranges['scale'][1], size=(n, 2))
    cos, sin = np.cos(theta), np.sin(theta)
    rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], 1)
    sh = np.tile(np.eye(2), (n, 1, 1))
    sh[:, 1, 0] = shear
    return np.einsum('nij,njk,nk->nik', rot, sh, scale), rng.uniform(0, 1, size=(n, 2))


def affine_on_canvas(digit40, matrix, placement):
    """One digit [40, 40] (centred) -> transformed [40, 40]: `matrix` applied about the canvas
    centre, then translated to `placement` in [0, 1]^2 of the room that keeps the digit's ink
    inside the frame. scipy.ndimage.affine_transform, bilinear."""
    from scipy import ndimage
    centre = (CANVAS - 1) / 2.
    ink = np.argwhere(digit40 > 0)
    if len(ink) == 0:
        return digit40.copy()
    lo, hi = ink.min(0) - 0.5, ink.max(0) + 0.5
    corners = np.array([[lo[0], lo[1]], [lo[0], hi[1]], [hi[0], lo[1]], [hi[0], hi[1]]]) - centre
    moved = corners @ matrix.T + centre
    room_lo, room_hi = -0.5 - moved.min(0), CANVAS - 0.5 - moved.max(0)
    shift = np.where(room_hi > room_lo, room_lo + placement * (room_hi - room_lo), 0.)
    inverse = np.linalg.inv(matrix)
    offset = centre - inverse @ (centre + shift)
    out = ndimage.affine_transform(digit40, inverse, offset=offset, order=1, mode='constant')
    return np.clip(out, 0., 1.)


def generate_affnist_like(digits28, seed=0):
    """[N, 28, 28, 1] in [0, 1] -> [N, 40, 40, 1] float32: each digit centred on the canvas,
    then a random affine in AFFINE_RANGES and a random in-frame translation. Image i depends
    only on (seed, i) for N <= 10,000 (parameters are drawn for 10,000 digits), so any prefix
    equals the same-seed run on fewer digits."""
    rng = np.random.RandomState(seed)
    n_all = max(len(digits28), 10000)
    matrices, placements = random_affines(n_all, rng)
    canvas = pad_to_canvas(digits28)[..., 0].astype('float64')
    out = np.empty(canvas.shape, dtype='float32')
    for i in range(len(canvas)):
        out[i] = affine_on_canvas(canvas[i], matrices[i], placements[i])
    return out[..., None]


def _content_hash(x, labels):
    """sha256 (hex) of a cached set's arrays: x uint8 [N, 40, 40, 1], labels int [N]."""
    digest = hashlib.sha256(np.ascontiguousarray(x, dtype='uint8').tobytes())
    digest.update(np.ascontiguousarray(labels, dtype='int64').tobytes())
    return digest.hexdigest()


def _read_cache(path, n, y):
    """The cached x uint8 [n, 40, 40, 1] at path, or None where it must be rebuilt (unreadable,
    another size, other labels); UserError when its content does not match the hash stored
    with it when it was written (damaged, or not written by affnist_like)."""
    try:
        with np.load(path) as cached:
            x, labels = cached['x'], cached['labels']
            stored = str(cached['sha256']) if 'sha256' in cached.files else None
    except (OSError, ValueError, KeyError):
        return None  # damaged beyond reading: rebuilt
    if x.shape != (n, CANVAS, CANVAS, 1) or not np.array_equal(labels, y.argmax(1)):
        return None
    if stored != _content_hash(x, labels):
        raise UserError('the cached %s set %s %s: delete it and it is made again'
                        % (GENERATED_LABEL, path, 'has no content hash (written by an older '
                           'version or another program)' if stored is None else
                           'does not match the content hash stored with it (damaged)'))
    return x


def affnist_like(mnist_test, cache_dir=None, seed=0):
    """The affNIST-style (generated) test set: (x [N, 40, 40, 1], y [N, 10], GENERATED_LABEL).

    mnist_test: (x [N, 28, 28, 1], y one-hot) MNIST test digits. Cached in cache_dir
    (default data/affnist/) as affnist_style_seed<seed>_n<N>.npz with the sha256 of its
    content, written atomically; a cache that does not match (size, labels) is rebuilt, one
    whose content does not match its hash refused (UserError: delete it).
    """
    x28, y = mnist_test
    directory = cache_dir or DEFAULT_AFFNIST_DIR
    path = os.path.join(directory, 'affnist_style_seed%d_n%d.npz' % (seed, len(x28)))
    if os.path.isfile(path):
        cached = _read_cache(path, len(x28), y)
        if cached is not None:
            return cached.astype('float32') / 255., y, GENERATED_LABEL
    x = np.round(generate_affnist_like(x28, seed) * 255).astype('uint8')
    labels = y.argmax(1)
    try:
        os.makedirs(directory, exist_ok=True)
        with atomic_write(path) as tmp:
            np.savez_compressed(tmp, x=x, labels=labels, sha256=_content_hash(x, labels))
        print('%s set cached in %s' % (GENERATED_LABEL, path))
    except (OSError, UserError) as e:
        print('warning: could not cache the %s set in %s (%s)' % (GENERATED_LABEL, path, e))
    return x.astype('float32') / 255., y, GENERATED_LABEL


# ---------------------------------------------------------------- the experiment's data
EXPANDED_TEST_SEED = 12345  # fixed: the expanded-MNIST test set is the same on every run


def expanded_mnist(data_dir=None, train_samples=None, test_samples=None, affnist_dir=None,
                   affnist_cache=None):
    """--dataset affnist: (train, test, affnist) for the §5.2 experiment.

    train: MNIST training digits centred on 40x40 ([N, 40, 40, 1], one-hot [N, 10]); training
    batches re-place them at random every epoch (random_translation). test: the
    expanded MNIST test set, each test digit at one fixed seeded random position on 40x40.
    affnist = (x, y, description): the affNIST evaluation set (affnist_eval_set), loaded now
    so that a bad file fails before training. Each set is cut to its first *_samples images.
    """
    # the whole test split: the generated affNIST-style set is made (and cached) from all of it
    (x_train, y_train), (x_test, y_test) = utils.load_mnist(data_dir, train_samples=train_samples)
    affnist = affnist_eval_set((x_test, y_test), test_samples, affnist_dir, affnist_cache)
    x_test, y_test = x_test[:test_samples], y_test[:test_samples]
    return ((pad_to_canvas(x_train), y_train),
            (translated_mnist(x_test, CANVAS, EXPANDED_TEST_SEED), y_test), affnist)


def affnist_eval_set(mnist_test, limit=None, directory=None, cache_dir=None):
    """(x, y, description) of the affNIST set to test on, cut to `limit` images: the real
    files in `directory` when given (or when data/affnist/ holds them), else the generated
    affNIST-style set (cached under cache_dir, default data/affnist/)."""
    if directory or find_real_affnist(DEFAULT_AFFNIST_DIR):
        x, y, description = load_affnist(directory or DEFAULT_AFFNIST_DIR, 'test', limit)
        if looks_just_centered(x):
            matches = check_just_centered(x, mnist_test[0])
            print('warning: %s is the just-centered set (MNIST padded by 6 px, %s MNIST test '
                  'order), not the transformed affNIST test set'
                  % (description, 'matches' if matches else 'does NOT match'))
        return x, y, description
    x28, y = mnist_test
    return affnist_like((x28[:limit], y[:limit]), cache_dir, seed=0)
