"""MultiMNIST (Sabour et al. 2017, section 6): two shifted MNIST digits of different classes
overlaid on a 36x36 canvas, generated on the fly from MNIST arrays. NumPy only.

Training batches (served by batches.OverlayBatches) are a pure function of (seed, epoch,
batch_index), like the shifted MNIST batches; the test set is a fixed function of its seed.
"""
import numpy as np

from data_errors import DataError

CANVAS = 36
MAX_SHIFT = 4
N_CLASS = 10
# Efficient-CapsNet's MultiMNIST network (EscVM/Efficient-CapsNet,
# models/efficient_capsnet_graph_multimnist.py), as capsulenet.EfficientCapsNet keywords;
# 36x36: 36 -> 32 -> 30 -> 14 -> 6, primary kernel 5 stride 2 -> 1x1x128.
EFFICIENT = dict(conv_kernels=(5, 3, 3, 3), conv_strides=(1, 1, 2, 2), primary_kernel=5,
                 primary_strides=2)


# ---------------------------------------------------------------- inputs
def _digits(x):
    """[N, h, w] or [N, h, w, 1] (float in [0, 1], or uint8 0..255) -> float32 [N, h, w]."""
    x = np.asarray(x)
    if x.ndim == 4 and x.shape[3] == 1:
        x = x[..., 0]
    if x.ndim != 3:
        raise DataError('MultiMNIST digits have shape %s, expected [N, h, w] or [N, h, w, 1]'
                        % (x.shape,))
    if x.dtype == np.uint8:
        return x.astype('float32') / 255.
    return x.astype('float32', copy=False)


def int_labels(y):
    """Integer labels [N] from integer labels [N] or one-hot labels [N, n_class]."""
    y = np.asarray(y)
    if y.ndim == 2:
        y = y.argmax(axis=1)
    if y.ndim != 1:
        raise DataError('MultiMNIST labels have shape %s, expected [N] or one-hot [N, classes]'
                        % (y.shape,))
    return y.astype('int64')


def _rng(seed, *stream):
    # seed modulo 2**32 so negative or large CLI seeds still work; the stream numbers keep the
    # training batches, epoch orders and test set apart
    return np.random.RandomState([int(seed) % 2 ** 32] + [int(s) for s in stream])


# ---------------------------------------------------------------- placement
def shift_on_canvas(digits, dy, dx, canvas=CANVAS):
    """Digits centred on a black canvas, then moved down dy and right dx pixels (zero fill).

    digits: [N, h, w] or [N, h, w, 1]; dy, dx: ints [N] -> float32 [N, canvas, canvas, 1].
    28x28 digits on 36x36 are padded by 4, so shifts within +-4 keep every pixel; larger shifts
    (the official `--shift=6 --pad=4`) cut what leaves the canvas.
    """
    d = _digits(digits)
    n, h, w = d.shape
    if h > canvas or w > canvas:
        raise DataError('digits of %dx%d do not fit a %dx%d canvas' % (h, w, canvas, canvas))
    dy = np.broadcast_to(np.asarray(dy, dtype='int64'), (n,))
    dx = np.broadcast_to(np.asarray(dx, dtype='int64'), (n,))
    # a frame `reach` pixels wider on every side holds each digit whatever its shift; each
    # output is then one canvas-sized window of it, read with one fancy index
    reach = int(max(np.abs(dy).max(initial=0), np.abs(dx).max(initial=0)))
    frame = np.zeros((n, canvas + 2 * reach, canvas + 2 * reach), dtype='float32')
    top, left = reach + (canvas - h) // 2, reach + (canvas - w) // 2
    frame[:, top:top + h, left:left + w] = d
    rows = (reach - dy)[:, None] + np.arange(canvas)
    cols = (reach - dx)[:, None] + np.arange(canvas)
    out = frame[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out[..., None]


def random_shifts(n, rng, max_shift=MAX_SHIFT):
    """(dy, dx): two int arrays [n], uniform integers in [-max_shift, max_shift]."""
    dy, dx = rng.randint(-max_shift, max_shift + 1, size=(2, n))
    return dy, dx


# ---------------------------------------------------------------- partners
def _class_table(labels):
    """(order, start, count): indices sorted by class, and each class's slice of that order."""
    order = np.argsort(labels, kind='stable')
    count = np.bincount(labels, minlength=N_CLASS)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    return order, start, count


def _other_class(ranks, cls, order, start, count):
    """The rank-th index (in class order) among the indices whose class is not cls."""
    # positions [start[c], start[c] + count[c]) of `order` hold class c: skip over them
    pos = np.where(ranks < start[cls], ranks, ranks + count[cls])
    return order[pos]


def _check_labels(labels):
    if labels.size and (labels.min() < 0 or labels.max() >= N_CLASS):
        raise DataError('MultiMNIST labels must be 0..%d, got %d..%d'
                        % (N_CLASS - 1, labels.min(), labels.max()))
    if labels.size and np.all(labels == labels[0]):
        raise DataError('MultiMNIST needs digits of at least two classes, all labels are %d'
                        % labels[0])


def pairs(labels, rng, index=None):
    """A partner for each digit: an index of a different class, uniform among those.

    labels: int [N] (or one-hot [N, 10]); rng: np.random.RandomState; index: int [B] (the
    digits to pair, default all N) -> int [B] indices into labels, from the whole split.
    """
    labels = int_labels(labels)
    _check_labels(labels)
    index = np.arange(len(labels)) if index is None else np.asarray(index, dtype='int64')
    order, start, count = _class_table(labels)
    cls = labels[index]
    ranks = rng.randint(0, len(labels) - count[cls])  # one draw per digit, its own range
    return _other_class(ranks, cls, order, start, count)


def distinct_partners(labels, k, rng):
    """k distinct partners of a different class for each digit (Floyd's sampling, per row).

    labels: int [N] (or one-hot) -> int [N, k] indices; each row a uniform random k-subset of
    the digits of other classes, in random order.
    """
    labels = int_labels(labels)
    _check_labels(labels)
    order, start, count = _class_table(labels)
    others = len(labels) - count[labels]
    if k > others.min():
        raise DataError('MultiMNIST: %d partners per digit asked, but a class has only %d '
                        'digits of other classes' % (k, others.min()))
    ranks = np.empty((len(labels), k), dtype='int64')
    for j in range(k):
        # Floyd: draw t in [0, m - k + j]; if already taken, take m - k + j (never taken yet)
        top = others - k + j
        t = rng.randint(0, top + 1)
        taken = (ranks[:, :j] == t[:, None]).any(axis=1)
        ranks[:, j] = np.where(taken, top, t)
    ranks = _shuffle_rows(ranks, rng)
    return _other_class(ranks, labels[:, None], order, start, count)


def _shuffle_rows(a, rng):
    """Each row of a [N, k] permuted independently (Floyd's order is not uniform)."""
    keys = rng.random_sample(a.shape)
    return np.take_along_axis(a, np.argsort(keys, axis=1), axis=1)


# ---------------------------------------------------------------- images
def overlay(x, labels, first_index, second_index, rng, max_shift=MAX_SHIFT, canvas=CANVAS,
            with_classes=False):
    """Overlaid pairs (first_index[i], second_index[i]), each digit shifted independently.

    x: [N, 28, 28(, 1)]; labels int [N]; indices int [B] -> (images, two_hot, first, second):
    images float32 [B, canvas, canvas, 1] = clip(first + second, 0, 1); two_hot float32
    [B, 10]; first, second float32 [B, canvas, canvas, 1], each shifted digit alone (the
    reconstruction targets). with_classes: also classes int [B, 2] (first's, second's).
    """
    n = len(first_index)
    dy, dx = random_shifts(2 * n, rng, max_shift)
    placed = shift_on_canvas(np.asarray(x)[np.concatenate([first_index, second_index])],
                             dy, dx, canvas)
    first, second = placed[:n], placed[n:]
    images = np.clip(first + second, 0., 1.)
    classes = np.stack([labels[first_index], labels[second_index]], axis=1)
    two_hot = np.zeros((n, N_CLASS), dtype='float32')
    np.put_along_axis(two_hot, classes, 1., axis=1)
    out = (images, two_hot, first, second)
    return out + (classes,) if with_classes else out


def epoch_order(n, seed, epoch):
    """The shuffled order of the n training digits in an epoch: int [n], fixed by (seed, epoch)."""
    return _rng(seed, epoch).permutation(n)


def overlay_batch(x, y, index_array, seed, epoch, batch_index, max_shift=MAX_SHIFT,
                  canvas=CANVAS, with_classes=False):
    """A training batch, a pure function of (seed, epoch, batch_index): same inputs, same output.

    x: [N, 28, 28(, 1)] in [0, 1]; y: int [N] or one-hot [N, 10]; index_array: int [B], the
    batch's first digits (e.g. epoch_order(N, seed, epoch)[b*B:(b+1)*B]) -> (images
    [B, 36, 36, 1], two_hot [B, 10], first [B, 36, 36, 1], second [B, 36, 36, 1]) float32, plus
    classes int [B, 2] if with_classes. Partners (other class, same split) and all shifts are
    drawn afresh for every (seed, epoch, batch_index).
    """
    labels = int_labels(y)
    index_array = np.asarray(index_array, dtype='int64')
    # batch_index + 1: stream (seed, epoch) is the epoch order, (seed, 0, 0) the test set
    rng = _rng(seed, epoch, batch_index + 1)
    partners = pairs(labels, rng, index_array)
    return overlay(x, labels, index_array, partners, rng, max_shift, canvas, with_classes)


def test_set(x, y, pairs_per_image, seed, max_shift=MAX_SHIFT, canvas=CANVAS,
             with_classes=False):
    """The fixed test set: each test digit overlaid with K distinct partners of other classes.

    x: [N, 28, 28(, 1)]; y: int [N] or one-hot [N, 10]; pairs_per_image: K -> arrays as in
    overlay_batch with N*K items, item i*K + k = digit i over its k-th partner. Memory:
    N*K*36*36*4 bytes per image array (the paper's K = 1000 on the full split is 52 GB).
    """
    labels = int_labels(y)
    if pairs_per_image < 1:
        raise DataError('MultiMNIST pairs per test image must be >= 1, got %d' % pairs_per_image)
    rng = _rng(seed, 0, 0)
    partners = distinct_partners(labels, pairs_per_image, rng)
    first = np.repeat(np.arange(len(labels)), pairs_per_image)
    return overlay(x, labels, first, partners.ravel(), rng, max_shift, canvas, with_classes)


def test_set_bytes(n_digits, pairs_per_image, max_shift=MAX_SHIFT, canvas=CANVAS):
    """Peak bytes test_set holds for n_digits test digits and pairs_per_image partners each
    (Python ints: no overflow): per item, float32 the frames of its two digits
    (shift_on_canvas, canvas + 2 * max_shift wide), their placed copies, the sum before
    clipping and the image."""
    frame = (canvas + 2 * max_shift) ** 2
    return 4 * (2 * frame + 4 * canvas * canvas) * int(n_digits) * int(pairs_per_image)


test_set.__test__ = False  # a data function: pytest must not collect it where it is imported


# ---------------------------------------------------------------- metric and loss references
def two_digit_correct(two_hot, lengths):
    """Per item: True when the two longest capsules are exactly the two digits.

    two_hot: [B, 10] (two ones); lengths: [B, 10] capsule lengths -> bool [B].
    """
    two_hot, lengths = np.asarray(two_hot), np.asarray(lengths)
    top2 = np.argsort(-lengths, axis=1, kind='stable')[:, :2]
    return np.take_along_axis(two_hot, top2, axis=1).sum(axis=1) == 2


def two_digit_accuracy(two_hot, lengths):
    """The paper's MultiMNIST accuracy: fraction of items whose two longest capsules are the two
    digits. two_hot, lengths: [B, 10] -> float."""
    return float(np.mean(two_digit_correct(two_hot, lengths)))


def np_margin_loss(y_true, lengths, m_plus=0.9, m_minus=0.1, lam=0.5):
    """Margin loss summed over classes, per item (valid for one-hot and two-hot labels).

    y_true, lengths: [B, 10] -> float64 [B]; the batch loss is its mean.
    """
    t, v = np.asarray(y_true, 'float64'), np.asarray(lengths, 'float64')
    loss = t * np.maximum(0., m_plus - v) ** 2 + lam * (1 - t) * np.maximum(0., v - m_minus) ** 2
    return loss.sum(axis=1)
