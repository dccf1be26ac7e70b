"""MultiMNIST generator, metric and loss against NumPy references, on small generated digits."""
import itertools

import numpy as np
import pytest

import multimnist as mm
from data_errors import DataError

N, SIDE, CANVAS, PAD = 20, 28, 36, 4


@pytest.fixture(scope='module')
def digits():
    """Generated (not MNIST) digits: every pixel in [0.5, 1] so positions show in the canvas and
    overlaps exceed 1 (clipping is exercised); labels 0..9 twice, shuffled."""
    rng = np.random.RandomState(0)
    x = rng.uniform(0.5, 1., (N, SIDE, SIDE)).astype('float32')
    y = rng.permutation(np.arange(N) % 10)
    return x, y


def locate(placed, x):
    """(digit index, dy, dx) of the one whole digit of x inside a canvas [36, 36, 1]."""
    rows = np.where(placed[..., 0].max(axis=1) > 0)[0]
    cols = np.where(placed[..., 0].max(axis=0) > 0)[0]
    top, left = rows[0], cols[0]
    assert rows[-1] - top == SIDE - 1 and cols[-1] - left == SIDE - 1, 'digit cut or smeared'
    window = placed[top:top + SIDE, left:left + SIDE, 0]
    match = [i for i in range(len(x)) if np.array_equal(window, x[i])]
    assert len(match) == 1
    return match[0], top - PAD, left - PAD


def reference_place(digit, dy, dx, canvas=CANVAS):
    """Loop reference: pixel (r, c) of a centred digit goes to (r + off + dy, c + off + dx)."""
    h, w = digit.shape
    out = np.zeros((canvas, canvas), 'float32')
    for r, c in itertools.product(range(h), range(w)):
        rr, cc = r + (canvas - h) // 2 + dy, c + (canvas - w) // 2 + dx
        if 0 <= rr < canvas and 0 <= cc < canvas:
            out[rr, cc] = digit[r, c]
    return out


def test_shift_on_canvas_matches_loop_reference(digits):
    x = digits[0][:6]
    dy, dx = np.array([-4, 4, 0, 6, -6, 2]), np.array([4, -4, 0, -6, 5, -1])  # 6: official cut
    out = mm.shift_on_canvas(x[..., None], dy, dx)
    assert out.shape == (6, CANVAS, CANVAS, 1) and out.dtype == np.float32
    for i in range(6):
        np.testing.assert_array_equal(out[i, ..., 0], reference_place(x[i], dy[i], dx[i]))
    # within +-4 every pixel stays on the canvas
    np.testing.assert_allclose(out[:3].sum(axis=(1, 2, 3)), x[:3].sum(axis=(1, 2)), rtol=1e-5)


def test_uint8_digits_are_scaled(digits):
    x8 = (digits[0][:3] * 255).astype('uint8')
    np.testing.assert_allclose(mm.shift_on_canvas(x8, 1, -2),
                               mm.shift_on_canvas(x8.astype('float32') / 255., 1, -2))


def test_pairs_other_class_and_uniform():
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4, 9])
    partners = mm.pairs(labels, np.random.RandomState(1), index=np.zeros(18000, 'int64'))
    counts = np.bincount(partners, minlength=len(labels))
    assert counts[:3].sum() == 0  # never the digit's own class
    others = counts[3:]  # 9 candidates, 2000 expected each
    assert np.all(np.abs(others - 2000) < 200), others
    every = mm.pairs(labels, np.random.RandomState(2))
    assert every.shape == labels.shape and np.all(labels[every] != labels)


def test_distinct_partners_are_distinct_other_class_and_uniform():
    # 3000 digits of class 0 share the same 4 candidates (classes 1, 2): 6 possible pairs each
    labels = np.array([0] * 3000 + [1, 1, 2, 2])
    rows = mm.distinct_partners(labels, 2, np.random.RandomState(0))
    assert rows.shape == (3004, 2)
    assert np.all(labels[rows] != labels[:, None]) and np.all(rows[:, 0] != rows[:, 1])
    pairs = np.sort(rows[:3000], axis=1)
    subsets, counts = np.unique(pairs, axis=0, return_counts=True)
    assert len(subsets) == 6 and np.all(np.abs(counts - 500) < 100), counts
    assert 1000 < np.sum(rows[:3000, 0] < rows[:3000, 1]) < 2000  # order shuffled too


def test_overlay_batch_properties(digits):
    x, y = digits
    index = np.array([3, 7, 0, 19, 11, 5])
    shifts = set()
    for epoch, b in itertools.product(range(3), range(6)):
        images, two_hot, first, second, classes = mm.overlay_batch(
            x, y, index, seed=5, epoch=epoch, batch_index=b, with_classes=True)
        assert images.shape == first.shape == second.shape == (6, CANVAS, CANVAS, 1)
        assert two_hot.shape == (6, 10) and images.dtype == np.float32
        np.testing.assert_array_equal(images, np.clip(first + second, 0, 1))
        assert (first + second).max() > 1  # the overlaps really were clipped
        np.testing.assert_array_equal(two_hot.sum(axis=1), 2)
        for i in range(6):
            j1, dy1, dx1 = locate(first[i], x)
            j2, dy2, dx2 = locate(second[i], x)
            assert j1 == index[i] and y[j2] != y[j1]
            assert list(classes[i]) == [y[j1], y[j2]]
            assert sorted(np.where(two_hot[i] == 1)[0]) == sorted([y[j1], y[j2]])
            assert max(abs(dy1), abs(dx1), abs(dy2), abs(dx2)) <= 4
            shifts.update([dy1, dx1, dy2, dx2])
    assert shifts == set(range(-4, 5))  # every shift in [-4, 4] is drawn


def test_overlay_batch_accepts_one_hot_and_channel_axis(digits):
    x, y = digits
    a = mm.overlay_batch(x, y, np.arange(5), 3, 1, 2)
    b = mm.overlay_batch(x[..., None], np.eye(10)[y], np.arange(5), 3, 1, 2)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def test_overlay_batch_is_pure(digits):
    x, y = digits
    order = mm.epoch_order(N, seed=9, epoch=2)
    np.testing.assert_array_equal(order, mm.epoch_order(N, 9, 2))
    assert sorted(order) == list(range(N))

    def batch(b, seed=9, epoch=2):
        return mm.overlay_batch(x, y, order[4 * b:4 * b + 4], seed, epoch, b)
    forward = [batch(b) for b in range(5)]
    backward = [batch(b) for b in (4, 3, 2, 2, 1, 0, 0)]
    for b, again in zip((4, 3, 2, 2, 1, 0, 0), backward):
        for u, v in zip(forward[b], again):
            np.testing.assert_array_equal(u, v)
    # other epoch, seed or batch index: other pairs and shifts
    assert not np.array_equal(batch(1)[0], batch(1, epoch=3)[0])
    assert not np.array_equal(batch(1)[0], batch(1, seed=10)[0])
    assert not np.array_equal(mm.overlay_batch(x, y, order[:4], 9, 2, 0)[0],
                              mm.overlay_batch(x, y, order[:4], 9, 2, 1)[0])
    assert not np.array_equal(mm.epoch_order(N, 9, 2), mm.epoch_order(N, 9, 3))


def test_test_set(digits):
    x, y = digits
    k = 3
    images, two_hot, first, second, classes = mm.test_set(x, y, k, seed=4, with_classes=True)
    assert images.shape == (N * k, CANVAS, CANVAS, 1) and two_hot.shape == (N * k, 10)
    np.testing.assert_array_equal(images, np.clip(first + second, 0, 1))
    np.testing.assert_array_equal(classes[:, 0], np.repeat(y, k))
    assert np.all(classes[:, 0] != classes[:, 1])
    partners = np.array([locate(s, x)[0] for s in second]).reshape(N, k)
    assert all(len(set(row)) == k for row in partners)  # distinct partners per test digit
    for i in (0, 7, N - 1):
        assert all(locate(first[i * k + j], x)[0] == i for j in range(k))
    again = mm.test_set(x, y, k, seed=4)
    for u, v in zip(again, (images, two_hot, first, second)):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(mm.test_set(x, y, k, seed=5)[0], images)


def test_bad_inputs_raise_data_error(digits):
    x, y = digits
    with pytest.raises(DataError, match='two classes'):
        mm.overlay_batch(x, np.zeros(N, 'int64'), np.arange(4), 0, 0, 0)
    with pytest.raises(DataError, match='partners'):
        mm.test_set(x, y, N, 0)
    with pytest.raises(DataError, match='pairs per test image'):
        mm.test_set(x, y, 0, 0)
    with pytest.raises(DataError, match='shape'):
        mm.shift_on_canvas(np.zeros((2, 28)), 0, 0)
    with pytest.raises(DataError, match='labels must be'):
        mm.pairs(np.array([0, 1, 10]), np.random.RandomState(0))
    with pytest.raises(DataError, match='fit'):
        mm.shift_on_canvas(np.zeros((2, 40, 40)), 0, 0)


def test_two_digit_accuracy_against_loop():
    rng = np.random.RandomState(3)
    two_hot = np.zeros((200, 10))
    for row in two_hot:
        row[rng.choice(10, 2, replace=False)] = 1
    lengths = rng.uniform(0, 1, (200, 10))
    lengths[:100] += 2 * two_hot[:100]  # the first half right by construction
    expected = [set(np.argsort(l)[-2:]) == set(np.where(t)[0]) for t, l in zip(two_hot, lengths)]
    np.testing.assert_array_equal(mm.two_digit_correct(two_hot, lengths), expected)
    assert mm.two_digit_accuracy(two_hot, lengths) == pytest.approx(np.mean(expected))
    assert all(expected[:100]) and not all(expected[100:])
    # one digit right is not enough
    t = np.eye(10)[[0]] + np.eye(10)[[1]]
    assert mm.two_digit_accuracy(t, [[.9, .1, .8, 0, 0, 0, 0, 0, 0, 0]]) == 0.
    assert mm.two_digit_accuracy(t, [[.9, .8, .1, 0, 0, 0, 0, 0, 0, 0]]) == 1.


def test_np_margin_loss_two_hot_by_hand():
    t = np.zeros((1, 10))
    t[0, [2, 5]] = 1
    v = np.full((1, 10), 0.05)
    v[0, 2], v[0, 5], v[0, 7] = 0.95, 0.6, 0.3
    # class 5: (0.9 - 0.6)^2 = 0.09; class 7: 0.5 * (0.3 - 0.1)^2 = 0.02; others zero
    np.testing.assert_allclose(mm.np_margin_loss(t, v), [0.11])


def test_test_set_bytes_is_the_measured_peak():
    # the CLI refuses a --multimnist_pairs whose test set would not fit by this
    # estimate; measured (tracemalloc sees NumPy's buffers) the peak was 0.92-0.94 of it
    import tracemalloc
    rng = np.random.RandomState(0)
    x, y = rng.rand(300, SIDE, SIDE).astype('float32'), rng.randint(0, 10, 300)
    for k in (1, 4):
        tracemalloc.start()
        try:
            arrays = mm.test_set(x, y, k, seed=0)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        del arrays
        assert 0.85 <= peak / mm.test_set_bytes(300, k) <= 1.0
