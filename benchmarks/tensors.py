"""Numpy in, numpy out, on whichever Keras and backend compat found: for the benchmarks and
the tests, which run a layer or a function on arrays outside a model.

evaluate: fn applied to arrays -> numpy; gradient_of_sum: d sum(fn(x)) / dx -> numpy;
map_fn and tile: the per-sample loop and copy the seed repo's routing is written with
(bench.py's naive layer). Not for the app's code: its ops are compat's.
"""
import numpy as np

from compat import BACKEND, KERAS3, keras, to_numpy

if KERAS3:
    from keras import ops as _ops
else:
    from keras import backend as _K


def map_fn(fn, elems):
    """fn applied to each slice elems[i] along axis 0, stacked (a per-sample loop)."""
    if KERAS3:
        return _ops.map(fn, elems)
    return _K.map_fn(fn, elems)


def tile(x, multiples):
    if KERAS3:
        return _ops.tile(x, multiples)
    return _K.tile(x, multiples)


def evaluate(fn, *arrays):
    """fn applied to numpy arrays as backend tensors -> numpy result."""
    if KERAS3:
        return to_numpy(fn(*[keras.ops.convert_to_tensor(a) for a in arrays]))
    return _K.eval(fn(*[_K.constant(a) for a in arrays]))


def gradient_of_sum(fn, array):
    """d sum(fn(x)) / dx at x = array, as numpy: used to check finite gradients."""
    array = np.asarray(array, dtype='float32')
    if not KERAS3:
        x = _K.constant(array)
        return _K.eval(_K.gradients(_K.sum(fn(x)), [x])[0])
    if BACKEND == 'tensorflow':
        import tensorflow as tf
        x = tf.constant(array)
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(fn(x))
        return tape.gradient(total, x).numpy()
    if BACKEND == 'jax':
        import jax
        return np.asarray(jax.grad(lambda x: fn(x).sum())(array))
    if BACKEND == 'torch':
        import torch
        x = torch.tensor(array, requires_grad=True)
        fn(x).sum().backward()
        return x.grad.numpy()
    raise NotImplementedError('gradients on backend %s' % BACKEND)
