"""Capsule math against hand values and a NumPy reference of Procedure 1."""
import numpy as np
import pytest

import compat as C
import capsulelayers as CL
import convolution
from capsulenet import margin_loss
from tensors import evaluate, gradient_of_sum

pytestmark = pytest.mark.stack


def np_squash(s, axis=-1):
    sq = np.sum(s ** 2, axis=axis, keepdims=True)
    return sq / (1 + sq) * s / np.sqrt(sq + CL.EPSILON)


def np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_routing(u, W, routings):
    """Procedure 1 written out: u [B, I, Din], W [J, I, Dout, Din] -> v [B, J, Dout]."""
    u_hat = np.einsum('jiod,bid->bjio', W, u)
    b = np.zeros(u_hat.shape[:3])
    for r in range(routings):
        c = np_softmax(b, axis=1)                       # over output capsules j
        s = np.einsum('bji,bjio->bjo', c, u_hat)
        v = np_squash(s)
        if r < routings - 1:
            b = b + np.einsum('bjio,bjo->bji', u_hat, v)
    return v


def test_squash_hand_values():
    s = np.array([[3., 4.], [0., 0.], [0.1, 0.]], dtype='float32')
    v = evaluate(CL.squash, s)
    np.testing.assert_allclose(v[0], 25. / 26. * np.array([0.6, 0.8]), rtol=1e-6)
    np.testing.assert_allclose(v[1], [0., 0.], atol=0)
    np.testing.assert_allclose(v[2], [0.01 / 1.01, 0.], rtol=1e-5)


def test_length_hand_values():
    caps = np.array([[[3., 4.], [0., 0.]]], dtype='float32')
    lengths = evaluate(lambda x: CL.Length()(x), caps)
    np.testing.assert_allclose(lengths, [[5., 0.]], atol=1e-6)


@pytest.mark.parametrize('fn', [CL.squash, lambda x: CL.Length()(x)], ids=['squash', 'Length'])
def test_gradient_finite_at_zero_vector(fn):
    x = np.zeros((2, 3, 8), dtype='float32')
    grad = gradient_of_sum(fn, x)
    assert np.all(np.isfinite(grad))


def test_length_gradient_does_not_vanish_for_tiny_capsules():
    # initial digit capsules are ~1e-7 long: d|v|/dv must stay a unit vector there
    x = np.full((1, 1, 16), 2.5e-8, dtype='float32')
    grad = gradient_of_sum(lambda t: CL.Length()(t), x)
    np.testing.assert_allclose(np.linalg.norm(grad), 1.0, rtol=1e-3)


def test_margin_loss_hand_values():
    y_true = np.array([[1., 0., 0.], [0., 1., 0.]], dtype='float32')
    y_pred = np.array([[0.8, 0.3, 0.05], [0.95, 0.5, 0.2]], dtype='float32')
    # sample 1: (0.9-0.8)^2 + 0.5*(0.3-0.1)^2 = 0.01 + 0.02 = 0.03
    # sample 2: 0.5*(0.95-0.1)^2 + 0.5*(0.2-0.1)^2 + (0.9-0.5)^2 = 0.36125 + 0.005 + 0.16
    loss = evaluate(margin_loss, y_true, y_pred)
    np.testing.assert_allclose(loss, [0.03, 0.52625], rtol=1e-5)


@pytest.mark.parametrize('routings', [1, 2, 3])
def test_capsule_layer_matches_numpy_procedure1(routings):
    rng = np.random.RandomState(routings)
    u = rng.normal(size=(4, 12, 8)).astype('float32') * 0.5
    layer = CL.CapsuleLayer(num_capsule=5, dim_capsule=6, routings=routings)
    v = evaluate(layer, u)          # builds the layer on first call
    W = rng.normal(size=(5, 12, 6, 8)).astype('float32') * 0.3
    layer.set_weights([W])
    v = evaluate(layer, u)
    np.testing.assert_allclose(v, np_routing(u.astype('float64'), W.astype('float64'), routings),
                               atol=1e-5)


def test_batch_dot_rank3_forms():
    rng = np.random.RandomState(0)
    x = rng.normal(size=(3, 4, 5)).astype('float32')
    y = rng.normal(size=(3, 5, 6)).astype('float32')
    np.testing.assert_allclose(evaluate(lambda a, b: C.batch_dot(a, b, (2, 1)), x, y),
                               np.einsum('bnk,bkm->bnm', x, y), rtol=1e-5, atol=1e-5)
    xt = np.transpose(x, (0, 2, 1)).copy()
    yt = np.transpose(y, (0, 2, 1)).copy()
    np.testing.assert_allclose(evaluate(lambda a, b: C.batch_dot(a, b, (1, 2)), xt, yt),
                               np.einsum('bnk,bkm->bnm', x, y), rtol=1e-5, atol=1e-5)


def test_mask_by_label_and_by_longest():
    caps = np.zeros((2, 3, 2), dtype='float32')
    caps[0, 1] = [1., 1.]
    caps[0, 2] = [0.1, 0.]
    caps[1, 0] = [0.5, 0.]
    caps[1, 2] = [0., 0.9]
    longest = evaluate(lambda c: CL.Mask()(c), caps)
    np.testing.assert_allclose(longest, [[0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0.9]])
    label = np.array([[0, 0, 1], [1, 0, 0]], dtype='float32')
    by_label = evaluate(lambda c, y: CL.Mask()([c, y]), caps, label)
    np.testing.assert_allclose(by_label, [[0, 0, 0, 0, 0.1, 0], [0.5, 0, 0, 0, 0, 0]])


def test_routings_must_be_positive():
    with pytest.raises(ValueError):
        CL.CapsuleLayer(10, 16, routings=0)


def test_capsule_layer_config_round_trip():
    layer = CL.CapsuleLayer(10, 16, routings=2, name='digitcaps')
    clone = CL.CapsuleLayer.from_config(layer.get_config())
    assert (clone.num_capsule, clone.dim_capsule, clone.routings, clone.name) == (10, 16, 2, 'digitcaps')


# ---------------------------------------------------------------- strided convolution
def np_conv(x, w, strides):
    """'valid' convolution, written out: x [B, H, W, C], w [k0, k1, C, F] -> [B, H', W', F]."""
    (s0, s1), (k0, k1) = strides, w.shape[:2]
    out = np.zeros((x.shape[0], (x.shape[1] - k0) // s0 + 1, (x.shape[2] - k1) // s1 + 1, w.shape[3]))
    for p in range(out.shape[1]):
        for q in range(out.shape[2]):
            out[:, p, q] = np.einsum('bijc,ijcf->bf', x[:, s0 * p:s0 * p + k0, s1 * q:s1 * q + k1], w)
    return out


def np_conv_gradients(x, w, strides, g=None):
    """d sum(g * conv(x, w)) / dx and / dw (g: the upstream gradient, ones if None): each
    input pixel gets the kernel taps, weighted by g, of every output that reads it; each tap
    the input pixels it reads, weighted by g."""
    (s0, s1), (k0, k1) = strides, w.shape[:2]
    out = ((x.shape[1] - k0) // s0 + 1, (x.shape[2] - k1) // s1 + 1)
    g = np.ones((x.shape[0],) + out + (w.shape[3],), 'float32') if g is None else g
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    for p in range(out[0]):
        for q in range(out[1]):
            rows, cols = slice(s0 * p, s0 * p + k0), slice(s1 * q, s1 * q + k1)
            dx[:, rows, cols] += np.einsum('ijcf,bf->bijc', w, g[:, p, q])
            dw += np.einsum('bijc,bf->ijcf', x[:, rows, cols], g[:, p, q])
    return dx, dw


STRIDED = pytest.mark.parametrize('size, kernel, strides', [
    ((20, 20), (9, 9), (2, 2)),   # the primary capsules' shapes (smaller channels)
    ((7, 9), (3, 3), (2, 2)),     # odd sizes: the last rows are not read
    ((11, 12), (5, 4), (2, 3)),   # unequal strides, a kernel already a stride multiple
    ((6, 6), (2, 2), (2, 2)),     # kernel == stride
    ((7, 7), (1, 2), (3, 2)),     # kernel smaller than the stride: rows no tap reads
])


@STRIDED
def test_patches_conv_equals_the_strided_conv(size, kernel, strides):
    rng = np.random.RandomState(0)
    x = rng.randn(2, size[0], size[1], 3).astype('float32')
    w = rng.randn(kernel[0], kernel[1], 3, 4).astype('float32')
    got = evaluate(lambda a, b: convolution.patches_conv(a, b, strides), x, w)
    np.testing.assert_allclose(got, np_conv(x, w, strides), rtol=1e-4, atol=1e-4)
    grad = gradient_of_sum(lambda a: convolution.patches_conv(a, _const(w), strides), x)
    np.testing.assert_allclose(grad, np_conv_gradients(x, w, strides)[0], rtol=1e-4, atol=1e-4)


@STRIDED
@pytest.mark.skipif(not (C.KERAS3 and C.BACKEND == 'tensorflow'), reason='TensorFlow path')
def test_folded_input_gradient_equals_the_strided_conv(size, kernel, strides):
    """TensorFlow's CPU path: tf.nn.conv2d with _fold_taps as input gradient and
    _tap_kernel_gradient as kernel gradient, against NumPy, with an upstream gradient that
    differs per output (a misplaced tap cannot hide)."""
    import tensorflow as tf
    rng = np.random.RandomState(0)
    x = rng.randn(2, size[0], size[1], 3).astype('float32')
    w = rng.randn(kernel[0], kernel[1], 3, 4).astype('float32')
    xt, wt = tf.constant(x), tf.constant(w)
    with tf.GradientTape() as tape:
        tape.watch([xt, wt])
        y = convolution._tf_strided_conv(xt, wt, strides)
        g = rng.randn(*y.shape).astype('float32')
        total = tf.reduce_sum(y * g)
    dx, dw = tape.gradient(total, [xt, wt])
    np.testing.assert_allclose(y.numpy(), np_conv(x, w, strides), rtol=1e-4, atol=1e-4)
    want_dx, want_dw = np_conv_gradients(x, w, strides, g)
    np.testing.assert_allclose(dx.numpy(), want_dx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw.numpy(), want_dw, rtol=1e-4, atol=1e-4)


@STRIDED
@pytest.mark.skipif(not (C.KERAS3 and C.BACKEND == 'tensorflow'), reason='TensorFlow path')
def test_tf_strided_conv_gradients_in_bf16_match_the_plain_op(size, kernel, strides):
    """In bfloat16 (--mixed_precision bf16) both gradients stay within bf16's precision of the
    exact ones (NumPy, float64, on the same bf16-rounded numbers), as TensorFlow's own ops do;
    the kernel gradient (one product per shift, summed in float32 inside the product) as close
    as Conv2DBackpropFilter. The input gradient adds its taps' products in bf16, so its error
    may be a few times the plain op's: bounded here by bf16's precision, not by the plain op."""
    import tensorflow as tf
    rng = np.random.RandomState(0)
    x = rng.randn(4, size[0], size[1], 16).astype('float32')
    w = rng.randn(kernel[0], kernel[1], 16, 8).astype('float32')
    xt, wt = tf.cast(x, tf.bfloat16), tf.cast(w, tf.bfloat16)
    y = tf.nn.conv2d(xt, wt, [1, strides[0], strides[1], 1], 'VALID')
    g = tf.cast(rng.randn(*y.shape).astype('float32'), tf.bfloat16)
    exact = np_conv_gradients(*[t.numpy().astype('float64') for t in (xt, wt)], strides,
                              g.numpy().astype('float64'))
    errors = []  # [(input gradient error, kernel gradient error)]: ours, then the plain op's
    for conv in (convolution._tf_strided_conv,
                 lambda a, b, s: tf.nn.conv2d(a, b, [1, s[0], s[1], 1], 'VALID')):
        with tf.GradientTape() as tape:
            tape.watch([xt, wt])
            total = tf.reduce_sum(tf.cast(conv(xt, wt, strides) * g, tf.float32))
        grads = tape.gradient(total, [xt, wt])
        errors.append([np.abs(d.numpy().astype('float64') - e).max() / np.abs(e).max()
                       for d, e in zip(grads, exact)])
    (ours_dx, ours_dw), (plain_dx, plain_dw) = errors
    assert max(ours_dx, ours_dw, plain_dx, plain_dw) <= 2. ** -6
    assert ours_dw <= 2 * plain_dw + 2. ** -9


def _const(array):
    """array as a backend tensor (a constant in the gradient checks)."""
    if C.KERAS3:
        import keras
        return keras.ops.convert_to_tensor(array)
    return C._K.constant(array)


def test_primary_capsule_conv_layer_equals_plain_conv2d(monkeypatch):
    """convolution.Conv2D (patches_conv on JAX/CPU, the folded input gradient on TensorFlow/CPU) and
    keras' Conv2D give the same outputs and the same
    weights layout; this exercises the rewritten path inside a model (on TensorFlow with the
    width threshold lowered: these 8 -> 16 channels are below it)."""
    monkeypatch.setattr(convolution, 'FOLD_MIN_CHANNELS', 0)
    rng = np.random.RandomState(1)
    x = rng.rand(3, 20, 20, 8).astype('float32')
    weights = [rng.randn(9, 9, 8, 16).astype('float32') * 0.1, rng.randn(16).astype('float32')]
    outputs = []
    for cls in (convolution.Conv2D, C.layers.Conv2D):
        C.clear_session(free_memory=False)
        inputs = C.layers.Input(shape=(20, 20, 8))
        layer = cls(16, 9, strides=2, padding='valid', name='primarycap_conv2d')
        model = C.models.Model(inputs, layer(inputs))
        layer.set_weights(weights)
        outputs.append(model.predict(x, batch_size=3))
    assert outputs[0].shape == (3, 6, 6, 16)
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not (C.KERAS3 and C.BACKEND == 'tensorflow'), reason='TensorFlow path')
@pytest.mark.parametrize('channels, filters, folded', [(256, 256, True), (128, 256, True),
                                                       (128, 128, False), (16, 32, False)])
def test_tf_folds_only_wide_strided_convolutions(monkeypatch, channels, filters, folded):
    """The paper's primary-capsule convolution (256 -> 256 channels) takes the per-tap input
    gradient; narrow ones (the tests' tiny models, Efficient-CapsNet) the plain op."""
    calls = []
    plain = convolution._tf_strided_conv
    monkeypatch.setattr(convolution, '_tf_strided_conv', lambda *a: calls.append(1) or plain(*a))
    monkeypatch.setattr(convolution, '_strided_path', lambda: 'fold')  # as on a CPU-only machine
    C.clear_session(free_memory=False)
    layer = convolution.Conv2D(filters, 9, strides=2, padding='valid')
    out = layer(np.zeros((1, 9, 9, channels), 'float32'))
    assert tuple(out.shape) == (1, 1, 1, filters) and bool(calls) is folded
