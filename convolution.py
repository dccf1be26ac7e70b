"""Strided 'valid' convolutions made faster to train where the backend's own op is slow.

Conv2D: keras' Conv2D (same weights, same class name, registered for saved full models as
compat.serializable does) whose strided 'valid' convolutions run
- on JAX on the CPU as `patches_conv` (one matrix product over the image patches, im2col);
- on TensorFlow on the CPU, when wide (FOLD_MIN_CHANNELS), as tf.nn.conv2d with `_fold_taps`
  (per-tap products) as its input gradient and `_tap_kernel_gradient` (one product per shift
  over the interleaved planes) as its kernel gradient (`_tf_strided_conv`);
- elsewhere (GPUs, PyTorch, keras 2.2.4) as the plain layer.
Which path a backend takes is `_strided_path`; the measurements behind it are in README, Speed.
The Keras-version and backend switches it reads come from compat.
"""
from compat import BACKEND, KERAS3, einsum, int_shape, layers, serializable, stack

def patches_conv(x, kernel, strides):
    """The 'valid' convolution of x with kernel at stride s, computed as one matrix product
    over the image patches it reads (im2col): the same numbers.

    x: [batch, H, W, C]; kernel: [k0, k1, C, F]; strides: (s0, s1) -> [batch, H', W', F],
    H' = (H - k0) // s0 + 1. Why: XLA's CPU backend computes the input gradient of a strided
    convolution as a dilated convolution, ~70x slower than the forward pass; here the input
    gradient is slices added back and the products are plain dots, which XLA does well
    (README, Speed: measured against a stride-1 space-to-depth rewrite too).
    """
    (s0, s1), (k0, k1) = strides, int_shape(kernel)[:2]
    h, w = int_shape(x)[1:3]
    out0, out1 = (h - k0) // s0 + 1, (w - k1) // s1 + 1
    # [batch, out0, k0, W, C]: the k0 rows read by each output row
    rows = stack([x[:, s0 * p:s0 * p + k0] for p in range(out0)], 1)
    # [batch, out0, out1, k0, k1, C]: the patch read by each output pixel
    patches = stack([rows[:, :, :, s1 * q:s1 * q + k1] for q in range(out1)], 2)
    return einsum('bpqijc,ijcf->bpqf', patches, kernel)


def _fold_taps(dy, kernel, in_shape, strides):
    """The input gradient of the 'valid' convolution of an input of in_shape (H, W, C) with
    kernel at strides, given dy: one [batch*P*Q, F] x [F, C] product per kernel tap, each added
    into the s0*s1 interleaved planes of the input (a tap (r + s0*m, t + s1*n) feeds plane
    (r, t) shifted by (m, n)), then the planes interleaved back (depth_to_space).

    dy: [batch, P, Q, F]; kernel: [k0, k1, C, F] -> [batch, H, W, C]. Same numbers as the
    transposed convolution, in a different order of additions.
    """
    import tensorflow as tf
    (s0, s1), (k0, k1) = strides, int_shape(kernel)[:2]
    (h, w, c), (p, q) = in_shape, int_shape(dy)[1:3]
    hp, wp = -(-h // s0), -(-w // s1)  # each plane's size; the input is cropped to h, w after
    rows = tf.reshape(dy, [-1, int_shape(dy)[3]])
    planes = []
    for r in range(s0):
        for t in range(s1):
            plane = None
            for m in range(-(-(k0 - r) // s0)):
                # the taps of kernel row r + s0*m: each a product, shifted along the width
                row = [tf.pad(tf.reshape(tf.matmul(rows, kernel[r + s0 * m, t + s1 * n],
                                                   transpose_b=True), [-1, p, q, c]),
                              [[0, 0], [0, 0], [n, wp - q - n], [0, 0]])
                       for n in range(-(-(k1 - t) // s1))]
                if row:  # then shifted along the height: summed a row at a time (memory)
                    row = tf.pad(tf.add_n(row), [[0, 0], [m, hp - p - m], [0, 0], [0, 0]])
                    plane = row if plane is None else plane + row
            # a plane no tap reaches (kernel smaller than the stride) gets no gradient
            planes.append(plane if plane is not None else
                          tf.zeros(tf.stack([tf.shape(dy)[0], hp, wp, c]), dy.dtype))
    # [batch, hp, wp, s0 * s1, C] -> [batch, hp, s0, wp, s1, C]: input row a * s0 + r is row a
    # of the planes (r, .), and likewise for the columns
    full = tf.reshape(tf.stack(planes, 3), [-1, hp, wp, s0, s1, c])
    full = tf.reshape(tf.transpose(full, [0, 1, 3, 2, 4, 5]), [-1, hp * s0, wp * s1, c])
    return full[:, :h, :w]


def _planes(x, strides, size):
    """The s0*s1 interleaved planes of x side by side in the channels (space-to-depth for
    unequal strides too): plane (r, t) holds the input pixels (s0*a + r, s1*b + t).

    x: [batch, H, W, C]; size: (hp, wp), the planes' size (x cropped or zero-padded to
    s0*hp x s1*wp) -> [batch, hp, wp, s0*s1*C], channel (r*s1 + t)*C + c.
    """
    import tensorflow as tf
    (s0, s1), (hp, wp), c = strides, size, int_shape(x)[3]
    x = x[:, :hp * s0, :wp * s1]
    x = tf.pad(x, [[0, 0], [0, hp * s0 - int_shape(x)[1]], [0, wp * s1 - int_shape(x)[2]],
                   [0, 0]])
    x = tf.reshape(x, [-1, hp, s0, wp, s1, c])
    return tf.reshape(tf.transpose(x, [0, 1, 3, 2, 4, 5]), [-1, hp, wp, s0 * s1 * c])


def _tap_kernel_gradient(x, dy, kernel_shape, strides):
    """The kernel gradient of the 'valid' convolution of x at strides, given dy: on the
    interleaved planes of x (`_planes`) the strided convolution is a stride-1 one, so the taps
    (r + s0*m, t + s1*n) of all planes (r, t) at one shift (m, n) read one unit-stride slice;
    each shift is one [batch*P*Q, s0*s1*C]^T x [batch*P*Q, F] product (rows or columns past the
    kernel's edge left out). Why: TensorFlow's CPU Conv2DBackpropFilter and its strided slices
    are slow here; plane building is one transpose.

    x: [batch, H, W, C]; dy: [batch, P, Q, F]; kernel_shape: (k0, k1, C, F) -> [k0, k1, C, F].
    Same numbers as Conv2DBackpropFilter, in a different order of additions.
    """
    import tensorflow as tf
    (s0, s1), (k0, k1, c, f), (p, q) = strides, kernel_shape, int_shape(dy)[1:3]
    m0, m1 = -(-k0 // s0), -(-k1 // s1)  # shifts per axis
    planes = _planes(x, strides, (p + m0 - 1, q + m1 - 1))
    rows = tf.reshape(dy, [-1, f])
    blocks = []
    for m in range(m0):
        for n in range(m1):
            r, t = min(s0, k0 - s0 * m), min(s1, k1 - s1 * n)  # the planes with taps here
            taps = tf.reshape(planes[:, m:m + p, n:n + q], [-1, s0, s1, c])[:, :r, :t]
            grad = tf.matmul(tf.reshape(taps, [-1, r * t * c]), rows, transpose_a=True)
            blocks.append(tf.pad(tf.reshape(grad, [r, t, c, f]),
                                 [[0, s0 - r], [0, s1 - t], [0, 0], [0, 0]]))
    # [m0, m1, s0, s1, C, F] -> [m0, s0, m1, s1, C, F]: kernel row s0*m + r, column s1*n + t
    grad = tf.reshape(tf.stack(blocks), [m0, m1, s0, s1, c, f])
    grad = tf.reshape(tf.transpose(grad, [0, 2, 1, 3, 4, 5]), [m0 * s0, m1 * s1, c, f])
    return grad[:k0, :k1]


def _tf_strided_conv(x, kernel, strides):
    """tf.nn.conv2d(x, kernel, strides, 'VALID') whose input gradient is `_fold_taps` and
    kernel gradient `_tap_kernel_gradient`: for the primary capsules' shapes on a 2-core
    AVX-512 CPU, forward + both gradients took 538 ms with TensorFlow's own
    (Conv2DBackpropInput), 453 ms with the per-tap input gradient; the per-shift kernel
    gradient takes about half of Conv2DBackpropFilter's time in bf16 (docs/speed.md).

    x: [batch, H, W, C]; kernel: [k0, k1, C, F] -> [batch, P, Q, F]."""
    import tensorflow as tf
    s0, s1 = strides

    @tf.custom_gradient
    def conv(x, kernel):
        def grad(dy):
            dx = _fold_taps(dy, kernel, int_shape(x)[1:], strides)
            dk = _tap_kernel_gradient(x, dy, int_shape(kernel), strides)
            return dx, dk
        return tf.nn.conv2d(x, kernel, [1, s0, s1, 1], 'VALID'), grad
    return conv(x, tf.convert_to_tensor(kernel))


# TensorFlow's 'fold' path pays only on wide convolutions: forward + both gradients, one thread,
# stride 2, tf.function: 9x9x256x256 on [100, 20, 20, 256] 1,600 ms fold vs 1,621 plain (2 threads:
# 453 vs 538 ms); 9x9x128x128 342 vs 341 ms; 9x9x64x64 122 vs 88 ms; Efficient-CapsNet's
# 3x3x64x128 on [16, 20, 20, 64] 10.1 vs 9.1 ms; and its 81 per-tap products add ~0.7-1 s to
# every trace (what the tests' tiny models pay per training run). So: input x output channels
# of at least this many
FOLD_MIN_CHANNELS = 128 * 256


def _strided_path():
    """Which rewrite of strided 'valid' convolutions this backend trains faster with: 'patches'
    (JAX on the CPU), 'fold' (TensorFlow on the CPU), or None (the plain op: GPUs, torch)."""
    if BACKEND == 'jax':
        import jax
        return 'patches' if jax.default_backend() == 'cpu' else None
    if BACKEND == 'tensorflow' and KERAS3:
        import tensorflow as tf
        return None if tf.config.list_logical_devices('GPU') else 'fold'
    return None


@serializable
class Conv2D(layers.Conv2D):
    """keras Conv2D whose strided 'valid' convolutions run as `patches_conv` on JAX on the CPU
    and, when wide (FOLD_MIN_CHANNELS), with per-tap gradients (`_tf_strided_conv`) on
    TensorFlow on the CPU (elsewhere, GPUs included, it is the plain layer). Same weights ([k, k, C, F]
    kernel, bias), same class name, so weights files written with either class load into both."""

    def convolution_op(self, inputs, kernel):
        if (tuple(self.strides) != (1, 1) and self.padding == 'valid'
                and self.data_format == 'channels_last' and tuple(self.dilation_rate) == (1, 1)
                and getattr(self, 'groups', 1) == 1):
            path = _strided_path()
            if path == 'patches':
                return patches_conv(inputs, kernel, tuple(self.strides))
            channels, filters = int_shape(kernel)[2:]
            if path == 'fold' and channels * filters >= FOLD_MIN_CHANNELS:
                return _tf_strided_conv(inputs, kernel, tuple(self.strides))
        return super(Conv2D, self).convolution_op(inputs, kernel)
