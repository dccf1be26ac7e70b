"""Your own data set: image folders (--dataset folder) or one .npz file (--dataset npz).

folder: DIR/train/<class>/* and DIR/test/<class>/* (the layout of Keras'
image_dataset_from_directory): the class names are the sorted subfolders of DIR/train/ (at
least 2, each with images); DIR/test/ may leave classes out but not add any. Files ending in
.bmp .gif .jpeg .jpg .png (Keras' list) are read with PIL. All images must have ONE size,
that of the first training image: nothing is resized, since a silent resize would distort
them; a differing image is an error naming it. Grey modes (1, L, LA, I, I;16, F) are read as
grey and everything else as RGB (alpha dropped); the set is 1-channel when every image is
grey, else 3-channel (grey images repeated to RGB). Each split is put in one fixed shuffled
order (seed 0), so --train_samples N reads N images spread over the classes.

npz: a NumPy .npz (no pickles) with x_train, y_train, x_test, y_test: images [N, H, W] or
[N, H, W, C] with C = 1 or 3, uint8 (0..255) or float in [0, 1]; labels integer [N] (or
[N, 1]) from 0; the classes are 0 .. the largest label (at least 2). Order as in the file.

Both give x float32 [N, H, W, C] in [0, 1] and y int64 [N]; any size, any class count >= 2.
"""
import os

import numpy as np

from data_errors import DataError

EXTENSIONS = ('.bmp', '.gif', '.jpeg', '.jpg', '.png')  # image_dataset_from_directory's
GREY_MODES = ('1', 'L', 'LA', 'I', 'I;16', 'F')
NPZ_KEYS = ('x_train', 'y_train', 'x_test', 'y_test')
ORDER_SEED = 0


# ---------------------------------------------------------------- folder
def _subfolders(path):
    return sorted(n for n in os.listdir(path)
                  if os.path.isdir(os.path.join(path, n)) and not n.startswith('.'))


def _images_in(path):
    return sorted(os.path.join(path, n) for n in os.listdir(path)
                  if n.lower().endswith(EXTENSIONS) and not n.startswith('.')
                  and os.path.isfile(os.path.join(path, n)))


def list_folder(root):
    """(class names, {split: [(path, label)]}) of root/train/<class>/ and root/test/<class>/.
    DataError for a missing split folder, < 2 classes, a class without training images or
    a test class that is not a training class."""
    splits = {}
    for split in ('train', 'test'):
        if not os.path.isdir(os.path.join(root, split)):
            raise DataError('%s has no %s/ folder: --dataset folder takes DIR/train/<class>/* '
                            'and DIR/test/<class>/*' % (root, split))
    classes = _subfolders(os.path.join(root, 'train'))
    if len(classes) < 2:
        raise DataError('%s holds %d class folder%s: a classifier needs at least 2 (one '
                        'folder of images per class)' % (os.path.join(root, 'train'),
                                                          len(classes), '' if classes else 's'))
    unknown = sorted(set(_subfolders(os.path.join(root, 'test'))) - set(classes))
    if unknown:
        raise DataError('%s has class folders that %s lacks: %s'
                        % (os.path.join(root, 'test'), os.path.join(root, 'train'),
                           ', '.join(unknown)))
    for split in ('train', 'test'):
        pairs = []
        for label, name in enumerate(classes):
            folder = os.path.join(root, split, name)
            found = _images_in(folder) if os.path.isdir(folder) else []
            if split == 'train' and not found:
                raise DataError('%s holds no images (%s)' % (folder, ' '.join(EXTENSIONS)))
            pairs += [(path, label) for path in found]
        if not pairs:
            raise DataError('%s holds no images' % os.path.join(root, split))
        splits[split] = pairs
    return classes, splits


def read_image(path):
    """One file -> uint8 [H, W] (grey modes) or [H, W, 3]; DataError naming an unreadable file."""
    from PIL import Image
    try:
        with Image.open(path) as image:
            image.load()
            grey = image.mode in GREY_MODES
            return np.asarray(image.convert('L' if grey else 'RGB'))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError('cannot read image %s: %s' % (path, e))


def read_images(pairs, size):
    """[(path, label)] -> (uint8 [N, H, W, C], int64 [N]); size: (H, W) every image must
    have (None: the first image's). C: 1 if all are grey, else 3."""
    images = []
    for path, _ in pairs:
        image = read_image(path)
        size = size or image.shape[:2]
        if image.shape[:2] != tuple(size):
            raise DataError('%s is %dx%d (WxH); the data set\'s images are %dx%d (its first '
                            'training image): --dataset folder takes images of one size, '
                            'resize them first' % (path, image.shape[1], image.shape[0],
                                                   size[1], size[0]))
        images.append(image)
    colour = any(im.ndim == 3 for im in images)
    x = np.stack([np.repeat(im[..., None], 3, -1) if colour and im.ndim == 2
                  else (im if colour else im[..., None]) for im in images])
    return x, np.array([label for _, label in pairs], dtype='int64')


def load_folder(root, train_samples=None, test_samples=None):
    """((x_train, y_train), (x_test, y_test), class names) of root: x float32 [N, H, W, C] in
    [0, 1], y int64 [N]; each split in its fixed shuffled order, cut to its first *_samples
    images before any is read. 1 or 3 channels: 3 when any image of either split has colour."""
    if not root or not os.path.isdir(root):
        raise DataError('--dataset folder needs --data_dir DIR, a folder with DIR/train/<class>/* '
                        'and DIR/test/<class>/*%s' % ('' if not root else ' (%s is none)' % root))
    classes, splits = list_folder(root)
    cut = {'train': train_samples, 'test': test_samples}
    read, size = {}, None
    for split in ('train', 'test'):
        pairs = splits[split]
        order = np.random.RandomState(ORDER_SEED).permutation(len(pairs))[:cut[split]]
        x, y = read_images([pairs[i] for i in order], size)
        size = x.shape[1:3]
        read[split] = (x, y)
    channels = max(read['train'][0].shape[3], read['test'][0].shape[3])
    return tuple((to_float(np.repeat(x, channels // x.shape[3], -1)), y)
                 for x, y in (read['train'], read['test'])) + (classes,)


def to_float(x):
    """uint8 [N, H, W, C] -> float32 in [0, 1]."""
    out = x.astype('float32')
    out /= 255.
    return out


# ---------------------------------------------------------------- npz
def _image_shape(x, key, path):
    """x as [N, H, W, C] (a view); DataError unless [N, H, W] or [N, H, W, 1 or 3], N > 0."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[3] not in (1, 3) or 0 in x.shape:
        raise DataError('%s: %s has shape %s, expected images [N, H, W] or [N, H, W, C] with '
                        'C = 1 or 3' % (path, key, list(x.shape)))
    return x


def _check_images(x, key, path):
    """Images [N, H, W, C] -> float32 in [0, 1]; DataError for another dtype or range."""
    if x.dtype == np.uint8:
        return to_float(x)
    if x.dtype.kind != 'f':
        raise DataError('%s: %s is %s, expected uint8 (0..255) or float in [0, 1]'
                        % (path, key, x.dtype.name))
    if not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 1:
        raise DataError('%s: %s is float with values from %s to %s, expected [0, 1] (scale '
                        'the images, or store them as uint8)' % (path, key, x.min(), x.max()))
    return x.astype('float32')


def _check_labels(y, key, path, n):
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dtype.kind not in 'iu' or y.ndim != 1:
        raise DataError('%s: %s is %s %s, expected integer labels [N] (class indices, not '
                        'one-hot)' % (path, key, y.dtype.name, list(y.shape)))
    if len(y) != n:
        raise DataError('%s: %s holds %d labels for %d images' % (path, key, len(y), n))
    if y.min() < 0:
        raise DataError('%s: %s has the negative label %d, expected 0, 1, ...'
                        % (path, key, y.min()))
    return y.astype('int64')


def load_npz(path, train_samples=None, test_samples=None):
    """((x_train, y_train), (x_test, y_test), n_class) of the .npz at path: x float32
    [N, H, W, C] in [0, 1], y int64 [N], cut to the first *_samples (labels are checked
    whole, images as cut); n_class: the largest label of either split + 1 (>= 2)."""
    if not path or not os.path.isfile(path):
        raise DataError('--dataset npz needs --data_dir FILE.npz holding x_train, y_train, '
                        'x_test, y_test%s' % ('' if not path else ' (%s is no file)' % path))
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in NPZ_KEYS if k not in data.files]
            if missing:
                raise DataError('%s lacks %s (it has: %s)' % (path, ', '.join(missing),
                                                              ', '.join(data.files) or 'nothing'))
            arrays = {k: data[k] for k in NPZ_KEYS}
    except DataError:
        raise
    except Exception as e:  # not a zip, a pickled object array, a damaged member...
        raise DataError('cannot read %s as a NumPy .npz: %s' % (path, e))
    splits = []
    for split, limit in (('train', train_samples), ('test', test_samples)):
        x = _image_shape(arrays['x_' + split], 'x_' + split, path)
        y = _check_labels(arrays['y_' + split], 'y_' + split, path, len(x))
        # only the images used are converted (and range-checked): float32 copies are large
        splits.append((_check_images(x[:limit], 'x_' + split, path), y[:limit]))
    (x_train, y_train), (x_test, y_test) = splits
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError('%s: x_train images are %s, x_test images %s: both splits need one '
                        'shape' % (path, 'x'.join(map(str, x_train.shape[1:])),
                                   'x'.join(map(str, x_test.shape[1:]))))
    n_class = int(max(arrays['y_train'].max(), arrays['y_test'].max())) + 1
    if n_class < 2:
        raise DataError('%s: every label is 0: a classifier needs at least 2 classes' % path)
    return (x_train, y_train), (x_test, y_test), n_class
