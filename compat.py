"""The one seam between this repo and the Keras version / backend it runs on.

Every other file imports Keras and tensor ops from here, so the
differences between keras==2.2.4 (TensorFlow 1.x graph mode) and Keras 3
(TensorFlow, JAX or PyTorch backend) live in this file only.

What differs, and how it is settled here:
- tensor ops: keras.backend (2.2.4) vs keras.ops (3): thin wrappers with one signature.
- batch_dot: 2.2.4 and Keras >= 2.3 disagree for rank > 3 operands (XifengGuo/CapsNet-Keras
  #104); both agree on rank-3 batched matrix products, the only form used here.
- optimizer state, devices (data-parallel training), CPU threads, seeds, mixed precision and
  XLA (--xla): each Keras and backend sets them its own way.
(The weights-file format is h5weights.py's job; user errors and atomic writes are safeio.py's;
why a backend cannot load, backends.py's; TF_CONFIG's addresses and the wait for the other
workers, cluster.py's.)
- training on a generator: fit_generator (2.2.4) vs fit (3).
- custom layers in saved full models: keras.saving's registry (3) vs the global custom
  objects (2.2.4); see `serializable`.
"""
import collections
import contextlib
import json
import os
import re
import sys
import tempfile

import numpy as np

import backends
from cluster import parse_address as parse_cluster_address, wait_for_workers
from safeio import UserError  # noqa: F401 (raised here; C.UserError for callers)

# TensorFlow's C++ log lines, before TensorFlow is imported (a user's own value wins). 3, not
# 2: with --seed (op determinism) TF 2.21's tf.data logs a harmless ERROR line, NodeDef
# `use_unbounded_threadpool`, preceded by absl's 'All log messages before absl::InitializeLog()'.
_QUIET = 'TF_CPP_MIN_LOG_LEVEL' not in os.environ
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# absl's informational lines from before its InitializeLog, written to fd 2 whatever the level
_EARLY_CHATTER = re.compile(r'^(WARNING: All log messages before absl::InitializeLog\(\)'
                            r'|[IW]\d{4} \d\d:\d\d:[\d.]+ +\d+ [\w.]+:\d+\] )')


@contextlib.contextmanager
def _without_early_chatter(quiet):
    """While TensorFlow loads (inside `import keras`), fd 2 goes to a temporary file; then its
    lines go to stderr less absl's early informational ones ('oneDNN custom operations are
    on', twice, on CPUs where oneDNN is on by default: TF_CPP_MIN_LOG_LEVEL does not reach
    them). Errors and everything else are kept; quiet=False (a level the user set): as is."""
    if not quiet:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode='w+b') as early:
        os.dup2(early.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            early.seek(0)
            lines = early.read().decode('utf-8', 'replace').splitlines(True)
            sys.stderr.write(''.join(l for l in lines if not _EARLY_CHATTER.match(l)))
            sys.stderr.flush()


def _import_keras():
    """keras, or a UserError of one line (backends.import_failure) when KERAS_BACKEND names no
    backend or its package is missing: the command lines import this module before their
    handlers exist, so safeio.interrupt_is_one_line's hook prints that line."""
    failure = None
    with _without_early_chatter(_QUIET):
        try:
            import keras
        except (ImportError, ValueError, OSError) as e:  # OSError: a backend's broken library
            failure = e
    if failure is not None:
        raise UserError(backends.import_failure(failure)) from failure
    return keras


keras = _import_keras()

KERAS_VERSION = tuple(int(p) for p in keras.__version__.split('.')[:2])
KERAS3 = KERAS_VERSION >= (3, 0)

from keras import layers, models, optimizers, callbacks  # noqa: E402

if KERAS3:
    from keras import ops as _ops
    BACKEND = keras.backend.backend()
else:
    from keras import backend as _K
    BACKEND = _K.backend()

Sequence = keras.utils.Sequence if not KERAS3 else keras.utils.PyDataset


# ---------------------------------------------------------------- tensor ops
# One signature each, whichever Keras is underneath.
_lib = _ops if KERAS3 else _K  # keras.ops and keras 2.2.4's backend share these names
sqrt, square, exp, relu = _lib.sqrt, _lib.square, _lib.exp, _lib.relu
reshape, expand_dims, zeros_like, cast = _lib.reshape, _lib.expand_dims, _lib.zeros_like, _lib.cast
argmax, equal, one_hot = _lib.argmax, _lib.equal, _lib.one_hot
reduce_max, reduce_min = _lib.max, _lib.min


def reduce_sum(x, axis=None, keepdims=False):
    return _lib.sum(x, axis=axis, keepdims=keepdims)


if KERAS3:
    def transpose(x, perm):
        return _ops.transpose(x, perm)

    def softmax(x, axis=-1):
        return _ops.softmax(x, axis=axis)

    def floatx():
        return keras.backend.floatx()
else:
    transpose, softmax, floatx = _K.permute_dimensions, _K.softmax, _K.floatx


def batch_dot(x, y, axes):
    """Batched matrix product of rank-3 tensors, same result on every Keras.

    x: [batch, n, k] (or [batch, k, n] for axes[0] == 1), y: [batch, k, m] (or [batch, m, k]
    for axes[1] == 2) -> [batch, n, m]. keras 2.2.4's K.batch_dot and the semantics of
    Keras >= 2.3 agree for rank-3 operands, which is why routing is written in this form.
    """
    ax, ay = axes
    if not KERAS3:
        return _K.batch_dot(x, y, axes=[ax, ay])
    if ax == 1:
        x = _ops.transpose(x, (0, 2, 1))
    if ay == 2:
        y = _ops.transpose(y, (0, 2, 1))
    return _ops.matmul(x, y)


def einsum(equation, *operands):
    """Einstein summation (keras 2.2.4 has none in keras.backend: TensorFlow's)."""
    if KERAS3:
        return _ops.einsum(equation, *operands)
    return _K.tf.einsum(equation, *operands)


def map_fn(fn, elems):
    """fn applied to each slice elems[i] along axis 0, stacked (a per-sample loop)."""
    if KERAS3:
        return _ops.map(fn, elems)
    return _K.map_fn(fn, elems)


def tile(x, multiples):
    if KERAS3:
        return _ops.tile(x, multiples)
    return _K.tile(x, multiples)


def int_shape(x):
    """Static shape of a tensor as a tuple (None for unknown dims)."""
    if KERAS3:
        return tuple(x.shape)
    return _K.int_shape(x)


def to_numpy(x):
    """Backend tensor (or numpy array) -> numpy array."""
    if KERAS3:
        return keras.ops.convert_to_numpy(x)
    return _K.eval(x) if not isinstance(x, np.ndarray) else x


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


# ---------------------------------------------------------------- saved full models
SERIALIZABLE_PACKAGE = 'capsnet'


def serializable(cls):
    """Class decorator: registers a custom layer so that, once its module is imported, a plain
    keras.models.load_model reads a full model holding it, without custom_objects. Keras 3:
    keras.saving.register_keras_serializable, saved as 'capsnet>Name' (safe mode allows
    registered classes: nothing in the file is executed); keras 2.2.4: the global custom
    objects, by class name, except a class named as a built-in layer (Conv2D below): that name
    loads the built-in, which on 2.2.4 is the same layer."""
    if KERAS3:
        return keras.saving.register_keras_serializable(package=SERIALIZABLE_PACKAGE)(cls)
    if not hasattr(layers, cls.__name__):
        keras.utils.get_custom_objects()[cls.__name__] = cls
    return cls


# ---------------------------------------------------------------- model helpers
def adam(learning_rate):
    """Adam with the given learning rate (2.2.4 calls it lr, Keras 3 learning_rate)."""
    if KERAS3:
        return optimizers.Adam(learning_rate=learning_rate)
    return optimizers.Adam(lr=learning_rate)


def get_learning_rate(model):
    if KERAS3:
        return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    return float(_K.get_value(model.optimizer.lr))


def dense_sequential(units, activations, input_dim, name):
    """A Sequential stack of Dense layers taking vectors of size input_dim."""
    stack = models.Sequential(name=name)
    if KERAS3:
        stack.add(keras.Input(shape=(int(input_dim),)))
        for n, act in zip(units, activations):
            stack.add(layers.Dense(int(n), activation=act))
    else:
        for i, (n, act) in enumerate(zip(units, activations)):
            extra = {'input_dim': int(input_dim)} if i == 0 else {}
            stack.add(layers.Dense(int(n), activation=act, **extra))
    return stack


def instance_norm(channels, name, epsilon=1e-3, initializer='random_uniform'):
    """Instance normalisation with a learned per-channel scale (gamma) and offset (beta):
    [batch, H, W, C] -> same, (x - mean) / sqrt(var + epsilon) * gamma + beta with mean and
    var over H, W of each image and channel (tensorflow_addons' InstanceNormalization, which
    Efficient-CapsNet uses; epsilon 1e-3 as there). Keras 3: GroupNormalization with one group
    per channel; keras 2.2.4 has none: InstanceNormalization below, same weights (gamma, beta).
    channels: C of the input; initializer: of gamma and beta ('random_uniform', +-0.05, as
    Efficient-CapsNet sets both)."""
    if KERAS3:
        return layers.GroupNormalization(groups=int(channels), epsilon=epsilon, name=name,
                                         gamma_initializer=initializer,
                                         beta_initializer=initializer)
    return InstanceNormalization(epsilon=epsilon, initializer=initializer, name=name)


if not KERAS3:
    @serializable
    class InstanceNormalization(layers.Layer):
        """keras 2.2.4's instance normalisation (see instance_norm): [batch, H, W, C] -> same."""

        def __init__(self, epsilon=1e-3, initializer='random_uniform', **kwargs):
            super(InstanceNormalization, self).__init__(**kwargs)
            self.epsilon, self.initializer = float(epsilon), initializer

        def build(self, input_shape):
            shape = (int(input_shape[-1]),)
            self.gamma = self.add_weight(name='gamma', shape=shape, initializer=self.initializer)
            self.beta = self.add_weight(name='beta', shape=shape, initializer=self.initializer)
            super(InstanceNormalization, self).build(input_shape)

        def call(self, inputs, **kwargs):
            mean = _K.mean(inputs, axis=(1, 2), keepdims=True)
            var = _K.mean(_K.square(inputs - mean), axis=(1, 2), keepdims=True)
            return (inputs - mean) / _K.sqrt(var + self.epsilon) * self.gamma + self.beta

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            config = {'epsilon': self.epsilon, 'initializer': self.initializer}
            return dict(list(super(InstanceNormalization, self).get_config().items())
                        + list(config.items()))


def upsampling_bilinear(name, size=2):
    """Bilinear upsampling by `size` with half-pixel centres ([batch, H, W, C] -> [batch,
    size*H, size*W, C]), as tf.image.resize in TF 2 and Keras 3's UpSampling2D. keras 2.2.4's
    UpSampling2D calls TF 1's resize_bilinear without half-pixel centres (other numbers from
    the same weights), hence its own layer here."""
    if KERAS3:
        return layers.UpSampling2D(size=size, interpolation='bilinear', name=name)
    return _BilinearUpSampling(size, name=name)


if not KERAS3:
    @serializable
    class _BilinearUpSampling(layers.Layer):
        """keras 2.2.4: tf.image.resize_bilinear with half_pixel_centers (TF >= 1.14)."""

        def __init__(self, size=2, **kwargs):
            super(_BilinearUpSampling, self).__init__(**kwargs)
            self.size = int(size)

        def call(self, inputs, **kwargs):
            import tensorflow as tf
            v1 = tf.compat.v1 if hasattr(tf, 'compat') else tf
            h, w = _K.int_shape(inputs)[1:3]
            return v1.image.resize_bilinear(inputs, (h * self.size, w * self.size),
                                            half_pixel_centers=True)

        def compute_output_shape(self, input_shape):
            return (input_shape[0], input_shape[1] * self.size, input_shape[2] * self.size,
                    input_shape[3])

        def get_config(self):
            return dict(list(super(_BilinearUpSampling, self).get_config().items())
                        + [('size', self.size)])


def loader_kwargs(workers):
    """Constructor arguments of a Sequence / PyDataset prepared by `workers` processes:
    Keras 3 takes them in the PyDataset, keras 2.2.4 in fit_generator (see fit)."""
    if KERAS3:
        return dict(workers=int(workers), use_multiprocessing=workers > 1)
    return {}


def fit(model, train_data, epochs, validation_data=None, callbacks_list=None, initial_epoch=0,
        verbose=1, workers=1):
    """Trains on a keras Sequence / PyDataset of ((inputs), (targets)) batches, prepared by
    `workers` processes (1: in this one; Keras 3 reads it from the PyDataset)."""
    # shuffle=False: the Sequence shuffles its samples itself, reproducibly (Keras would
    # also permute the batch order with Python's random, differently on several devices)
    kwargs = dict(epochs=epochs, validation_data=validation_data, callbacks=callbacks_list,
                  initial_epoch=initial_epoch, verbose=verbose, shuffle=False)
    if KERAS3:
        _build_before_tracing(model, train_data)
        return model.fit(train_data, **kwargs)
    return model.fit_generator(train_data, steps_per_epoch=len(train_data), workers=workers,
                               use_multiprocessing=workers > 1, **kwargs)


def _build_before_tracing(model, train_data):
    """Keras 3 + TensorFlow without a distribution strategy: builds the compiled loss' and
    metrics' variables from one batch's shapes before fit traces its train step.
    Why: that trainer defers this build into the first trace of train_step (its
    `_maybe_symbolic_build` returns early when no strategy is set; JAX, torch and strategies
    build first), and a tf.function whose first trace creates variables is traced a second
    time: measured 1.2-1.6 s more per fit for a tiny CapsNet on a 2-core CPU. The batch
    Sequences here are pure functions of (seed, epoch, index), so reading batch 0 changes
    nothing."""
    if BACKEND != 'tensorflow' or getattr(model, '_distribute_strategy', True) is not None:
        return
    # private: if a Keras release renames it or its argument, fit just traces twice again
    build = getattr(model, '_symbolic_build', None)
    if build is not None and 'data_batch' in _parameters(build) and len(train_data):
        build(data_batch=train_data[0])


def evaluate_logs(model, x, y, batch_size):
    """A compiled model's loss and metrics on (x, y), named as log.csv's val_ columns without
    their prefix ({'loss': .., 'capsnet_accuracy': .., ...}): Keras 3 returns a dict,
    keras 2.2.4 a list in the order of model.metrics_names."""
    if KERAS3:
        logs = model.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True)
        return {k: float(v) for k, v in logs.items()}
    values = model.evaluate(x, y, batch_size=batch_size, verbose=0)
    values = values if isinstance(values, list) else [values]
    return dict(zip(model.metrics_names, (float(v) for v in values)))


def pack_batch(inputs, targets):
    """One generator batch: Keras 3 wants tuples, keras 2.2.4 lists, of the input/target arrays."""
    if KERAS3:
        return tuple(inputs), tuple(targets)
    return list(inputs), list(targets)


def check_tensorboard():
    """UserError unless the TensorBoard callback can run: Keras 3 writes its logs with
    tf.summary, which needs the tensorboard package (and tensorflow, whatever the backend);
    keras 2.2.4 writes them with TensorFlow alone, but they are read with tensorboard. Checked
    before the data are loaded: it would fail once training starts (TBNotInstalledError)."""
    missing = [p for p in ('tensorboard', 'tensorflow') if not backends.installed(p)]
    if missing:
        raise UserError('--debug writes TensorBoard logs, and %s is not installed: pip install %s'
                        % (' or '.join(missing), ' '.join(missing)))


def tensorboard(log_dir, batch_size):
    """TensorBoard callback with weight histograms (check_tensorboard first)."""
    if KERAS3:
        return callbacks.TensorBoard(log_dir=log_dir, histogram_freq=1)
    return callbacks.TensorBoard(log_dir=log_dir, batch_size=batch_size, histogram_freq=1)


def clear_session(free_memory=True):
    """A fresh Keras session. free_memory=False skips the full garbage collection that Keras 3
    runs here (0.2-0.4 s a call once TensorFlow and a few models are loaded: the tests, which
    start ~180 sessions a run, leave that to Python's own collector); keras 2.2.4 runs none."""
    if KERAS3 and 'free_memory' in _parameters(keras.backend.clear_session):
        keras.backend.clear_session(free_memory=free_memory)
    else:  # keras 2.2.4, and Keras 3 releases before the argument (they always collect)
        keras.backend.clear_session()


def _parameters(fn):
    import inspect
    return inspect.signature(fn).parameters


def set_seed(seed):
    """Seeds Python, NumPy and the backend's random generators."""
    import random
    random.seed(seed)
    np.random.seed(seed)
    if KERAS3:
        keras.utils.set_random_seed(seed)
        if BACKEND == 'tensorflow':  # multi-threaded CPU reductions otherwise vary run to run
            import tensorflow as tf
            tf.config.experimental.enable_op_determinism()
    else:  # TF 1.x graph mode: no op-determinism switch (README, --seed)
        import tensorflow as tf
        tf.set_random_seed(seed)


# ---------------------------------------------------------------- mixed precision
# --mixed_precision name -> Keras 3 dtype policy: layers compute in the policy's type with
# float32 variables; layers that must stay float32 say dtype='float32' (capsulelayers).
PRECISIONS = {'off': 'float32', 'bf16': 'mixed_bfloat16', 'fp16': 'mixed_float16'}


def set_precision(name):
    """Sets the global mixed-precision policy ('off', 'bf16' or 'fp16') for the models built
    after it. Under 'fp16' Keras 3 wraps the optimizer in a LossScaleOptimizer at compile
    time (loss scaling). keras 2.2.4 has no policies: anything but 'off' is a UserError."""
    if name not in PRECISIONS:
        raise UserError('unknown precision %r (choose from %s)' % (name, ', '.join(PRECISIONS)))
    if not KERAS3:
        if name != 'off':
            raise UserError('--mixed_precision %s needs Keras 3 (keras %s has no mixed-precision '
                            'policies)' % (name, keras.__version__))
        return
    keras.mixed_precision.set_global_policy(PRECISIONS[name])


# ---------------------------------------------------------------- XLA (--xla)
XLA_MODES = ('auto', 'on')


def xla_compile_options(mode, seeded=False, distributed=False, testing=False):
    """model.compile keyword arguments for --xla: 'auto' -> {} (Keras decides: on TensorFlow
    XLA on GPUs only, JAX always compiles with XLA, PyTorch runs eagerly); 'on' -> the
    TensorFlow train and validation steps compiled with XLA (jit_compile=True), which Keras'
    auto leaves off on CPU-only machines although the paper's CapsNet trains faster with it
    there in float32 (and the other models slower: README, Speed).
    A UserError where 'on' cannot hold: with TensorFlow's deterministic ops (seeded: --seed;
    Keras then turns XLA off), under tf.distribute (distributed; Keras' auto never combines
    them and it is not tested here), on PyTorch (jit_compile is torch.compile there) and on
    keras 2.2.4 (no XLA), and with testing (-t: nothing is compiled for training).
    JAX: {} (every step is already an XLA program)."""
    if mode not in XLA_MODES:
        raise UserError('unknown --xla %r (choose from %s)' % (mode, ', '.join(XLA_MODES)))
    if mode == 'auto':
        return {}
    if testing:
        raise UserError('--xla on compiles the training steps; it does nothing with -t')
    if KERAS3 and BACKEND == 'jax':
        return {}
    if not (KERAS3 and BACKEND == 'tensorflow'):
        raise UserError('--xla on needs Keras 3 with the tensorflow (or jax) backend; this is '
                        'keras %s with %s' % (keras.__version__, BACKEND))
    if seeded:
        raise UserError('--xla on and --seed: Keras turns XLA off while TensorFlow\'s '
                        'deterministic ops (what --seed switches on) are on; drop one of them')
    if distributed:
        raise UserError('--xla on is for training on one device (not with --multi_gpu or '
                        'TF_CONFIG)')
    return {'jit_compile': True}


def check_xla(model, options):
    """After model.compile(**options): a UserError if XLA was asked for (options from
    xla_compile_options) but Keras turned it off (it warns and goes on without it, e.g. when
    TensorFlow's op determinism was switched on earlier in this process)."""
    if options.get('jit_compile') and not model.jit_compile:
        raise UserError('--xla on: Keras compiled this model without XLA (TensorFlow\'s '
                        'deterministic ops are on in this process)')


# ---------------------------------------------------------------- strided convolution
if KERAS3:
    def stack(tensors, axis):
        return _ops.stack(tensors, axis=axis)
else:
    def stack(tensors, axis):
        return _K.stack(tensors, axis=axis)


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


def _tf_strided_conv(x, kernel, strides):
    """tf.nn.conv2d(x, kernel, strides, 'VALID') whose input gradient is `_fold_taps`: for the
    primary capsules' shapes on a 2-core AVX-512 CPU, forward + both gradients took 538 ms
    with TensorFlow's own (Conv2DBackpropInput), 453 ms with the per-tap products (README, Speed).

    x: [batch, H, W, C]; kernel: [k0, k1, C, F] -> [batch, P, Q, F]."""
    import tensorflow as tf
    s0, s1 = strides

    @tf.custom_gradient
    def conv(x, kernel):
        def grad(dy):
            dx = _fold_taps(dy, kernel, int_shape(x)[1:], strides)
            dk = tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=tf.shape(kernel),
                                                 out_backprop=dy, strides=[1, s0, s1, 1],
                                                 padding='VALID')
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
    and, when wide (FOLD_MIN_CHANNELS), with `_fold_taps` as input gradient on TensorFlow on
    the CPU (elsewhere, GPUs included, it is the plain layer). Same weights ([k, k, C, F]
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


# ---------------------------------------------------------------- optimizer state (resume)
def get_optimizer_state(model):
    """The optimizer's variables as numpy arrays (step count, Adam moments), or None before
    the first training step has built them."""
    if KERAS3:
        variables = list(model.optimizer.variables)
        return [to_numpy(v) for v in variables] if model.optimizer.built and variables else None
    weights = model.optimizer.weights
    return _K.batch_get_value(weights) if weights else None


def set_optimizer_state(model, arrays):
    """Builds the compiled model's optimizer and loads `arrays` (from get_optimizer_state of
    the same architecture) into it. Raises UserError when count or shapes differ."""
    if KERAS3:
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        variables = list(model.optimizer.variables)
    else:
        model._make_train_function()  # creates Adam's moment variables (2.2.4)
        variables = model.optimizer.weights
    shapes = [tuple(int(d) for d in int_shape(v)) for v in variables]
    if shapes != [tuple(a.shape) for a in arrays]:
        raise UserError('optimizer state has %d arrays, this model\'s optimizer %d (or shapes differ)'
                        % (len(arrays), len(shapes)))
    if KERAS3:
        for v, a in zip(variables, arrays):
            v.assign(a)
    else:
        _K.batch_set_value(list(zip(variables, arrays)))


# ---------------------------------------------------------------- what runs where
def gpu_names():
    """Names of the GPUs the backend computes on ([] on a CPU-only machine)."""
    if BACKEND == 'tensorflow' and KERAS3:
        import tensorflow as tf
        return [d.name for d in tf.config.list_physical_devices('GPU')]
    if BACKEND == 'tensorflow':  # keras 2.2.4: the TF 1.x session's devices
        return [d.name for d in _K.get_session().list_devices() if 'GPU' in d.device_type]
    if BACKEND == 'jax':
        import jax
        return [str(d) for d in jax.devices() if d.platform == 'gpu']
    if BACKEND == 'torch':
        import torch
        return ['cuda:%d %s' % (i, torch.cuda.get_device_name(i))
                for i in range(torch.cuda.device_count())]
    return []


def stack_line():
    """'Keras 3.15.1, backend tensorflow, on the CPU (no GPU found), float32': the Keras
    version, the backend, its devices and the dtype policy that layers compute in."""
    gpus = gpu_names()
    policy = keras.mixed_precision.global_policy().name if KERAS3 else 'float32'
    return 'Keras %s, backend %s, on %s, %s' % (
        keras.__version__, BACKEND, ', '.join(gpus) if gpus else 'the CPU (no GPU found)', policy)


# ---------------------------------------------------------------- several devices
def _tf_devices(n_devices):
    """Names of n_devices TensorFlow devices: GPUs, else logical CPU devices made for the run
    (possible only before TensorFlow starts its runtime, i.e. before the first tensor)."""
    import tensorflow as tf
    gpus = tf.config.list_physical_devices('GPU')
    if gpus:
        if len(gpus) < n_devices:
            raise UserError('--multi_gpu %d: only %d GPU(s) visible' % (n_devices, len(gpus)))
        return ['/gpu:%d' % i for i in range(n_devices)]
    cpu = tf.config.list_physical_devices('CPU')[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n_devices)])
    except RuntimeError:  # runtime already started: use what it has
        pass
    cpus = tf.config.list_logical_devices('CPU')
    if len(cpus) < n_devices:
        raise UserError('--multi_gpu %d: no GPU and only %d CPU device(s)' % (n_devices, len(cpus)))
    print('No GPU: data-parallel over %d logical CPU devices (a test set-up, not faster)'
          % n_devices)
    return [d.name for d in cpus[:n_devices]]


def distribution_scope(n_devices, batch_size, worker=None):
    """Context manager for data-parallel training on n_devices devices (0 or 1: none), or on
    every worker of a TF_CONFIG cluster (worker: this process's multi_worker_task()).

    Build, compile, train and evaluate the model inside it; it yields `parallel(model)`,
    the model to compile and fit (the model itself except on keras 2.2.4). Each step's
    batch of batch_size images is split evenly between the devices, gradients are summed.
      TensorFlow: tf.distribute.MirroredStrategy over the GPUs (over logical CPU devices
        when there is no GPU); MultiWorkerMirroredStrategy when TF_CONFIG is set (then a
        worker that stops ends the others with a UserError, see _lost_workers_as_user_error).
      JAX: keras.distribution.DataParallel over jax.devices()[:n_devices] (on CPU, start
        with XLA_FLAGS=--xla_force_host_platform_device_count=N).
      keras 2.2.4: keras.utils.multi_gpu_model (GPUs only). PyTorch: not supported.
    """
    n_devices = int(n_devices or 0)
    multi_worker = worker is not None
    if n_devices <= 1 and not multi_worker:
        return contextlib.nullcontext(lambda model: model)
    if multi_worker and not (KERAS3 and BACKEND == 'tensorflow'):
        raise UserError('TF_CONFIG is set: multi-worker training needs Keras 3 with the '
                        'tensorflow backend (this is %s %s); unset TF_CONFIG to train alone'
                        % ('keras' if KERAS3 else 'keras 2.2.4 on', BACKEND))
    if KERAS3 and BACKEND not in ('tensorflow', 'jax'):
        raise UserError('--multi_gpu is not supported on the %s backend (use tensorflow or jax)'
                        % BACKEND)
    if batch_size % max(n_devices, 1):
        raise UserError('--batch_size %d is not divisible by --multi_gpu %d'
                        % (batch_size, n_devices))
    if not KERAS3:
        gpus = [d for d in _K.get_session().list_devices() if 'GPU' in d.device_type]
        if len(gpus) < n_devices:
            raise UserError('--multi_gpu %d on keras 2.2.4 needs %d GPUs (multi_gpu_model), '
                            'found %d' % (n_devices, n_devices, len(gpus)))
        from keras.utils import multi_gpu_model
        print('Data-parallel training: keras.utils.multi_gpu_model, %d replicas' % n_devices)
        return contextlib.nullcontext(lambda model: multi_gpu_model(model, gpus=n_devices))
    if BACKEND == 'tensorflow':
        import tensorflow as tf
        if multi_worker:
            # bounded, and one line for a port in use: TensorFlow waits without end
            wait_for_workers('%s %d' % (worker.type, worker.index), worker.address,
                             worker.peers)
            strategy = _multi_worker_strategy()
            print('Data-parallel training: tf.distribute MultiWorkerMirroredStrategy, %d '
                  'replicas on %d workers' % (strategy.num_replicas_in_sync, worker.workers))
            return _lost_workers_as_user_error(strategy.scope(), lambda model: model)
        strategy = tf.distribute.MirroredStrategy(_tf_devices(n_devices))
        print('Data-parallel training: tf.distribute %s, %d replicas'
              % (type(strategy).__name__, strategy.num_replicas_in_sync))
        return _yielding(strategy.scope(), lambda model: model)
    if BACKEND == 'jax':
        import jax
        devices = jax.devices()
        if len(devices) < n_devices:
            raise UserError('--multi_gpu %d: JAX sees %d device(s) (on CPU, set XLA_FLAGS='
                            '--xla_force_host_platform_device_count=%d)'
                            % (n_devices, len(devices), n_devices))
        dist = keras.distribution.DataParallel(devices=devices[:n_devices])
        print('Data-parallel training: keras.distribution.DataParallel, %d replicas' % n_devices)
        return _yielding(dist.scope(), lambda model: model)


def _yielding(scope, value):
    """The context manager `scope`, entering it gives `value`."""

    @contextlib.contextmanager
    def wrapped():
        with scope:
            yield value
    return wrapped()


# ---------------------------------------------------------------- several machines (TF_CONFIG)
WorkerTask = collections.namedtuple('WorkerTask', 'type index chief workers address peers')


def multi_worker_task():
    """This process's task in the cluster that TF_CONFIG describes: WorkerTask(type, index,
    chief, workers: how many chief and worker tasks the cluster has, address: its host:port,
    peers: {'worker 1': 'host:port', ...} the other chief and worker tasks), or None when
    TF_CONFIG is unset or empty. The chief (the task of type 'chief', else worker 0) is the
    one that writes --save_dir; TensorFlow's own format:
    {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}.
    Every address must be host:port with a port 1..65535 (cluster.parse_address)."""
    raw = os.environ.get('TF_CONFIG', '').strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
        cluster, task = config['cluster'], config['task']
        kind, index = task['type'], int(task['index'])
        cluster[kind][index]  # this task is one of the cluster's
        if index < 0:
            raise IndexError('negative index')
        workers = sum(len(cluster.get(k, ())) for k in ('chief', 'worker'))
        tasks = {'%s %d' % (k, i): a for k in sorted(cluster) for i, a in enumerate(cluster[k])}
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise UserError('TF_CONFIG does not describe this worker in a cluster (%s: %s); '
                        'expected {"cluster": {"worker": ["host:port", ...]}, "task": '
                        '{"type": "worker", "index": N}}' % (type(e).__name__, e))
    for name, address in sorted(tasks.items()):
        parse_cluster_address(address, name)
    own = '%s %d' % (kind, index)
    peers = {n: a for n, a in tasks.items() if n != own and n.split()[0] in ('chief', 'worker')}
    chief = kind == 'chief' or ('chief' not in cluster and kind == 'worker' and index == 0)
    return WorkerTask(kind, index, chief, workers, tasks[own], peers)


def _multi_worker_strategy():
    """tf.distribute.MultiWorkerMirroredStrategy, mended for Keras 3's fit (keras-team/keras
    #20585, open): fit reduces a nest of per-replica values (its first batch, to build the
    model) and scalar logs with axis=0, and the strategy refuses both; here each value of a
    nest is reduced on its own, and a scalar over the replicas only."""
    import tensorflow as tf

    class MendedStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op, value, axis):
            reduce_one = super(MendedStrategy, self).reduce

            def one(v):
                local = (v.values[0] if isinstance(v, tf.distribute.DistributedValues)
                         else tf.convert_to_tensor(v))
                return reduce_one(reduce_op, v, None if local.shape.rank == 0 else axis)
            return tf.nest.map_structure(one, value)
    return MendedStrategy()


@contextlib.contextmanager
def _lost_workers_as_user_error(scope, value):
    """`scope` (entering it gives `value`), where a collective op that fails because another worker stopped (killed,
    crashed, unreachable: TensorFlow's coordination service notices within seconds) becomes
    one UserError naming the worker, instead of a page of graph traceback."""
    import tensorflow as tf
    try:
        with scope:
            yield value
    except (tf.errors.UnavailableError, tf.errors.AbortedError,
            tf.errors.DeadlineExceededError, tf.errors.CancelledError) as e:
        message = str(getattr(e, 'message', e))
        where = sorted(set(re.findall(r'/job:\w+/replica:\d+/task:\d+|ipv4:[\d.]+:\d+',
                                      message)))
        raise UserError('multi-worker training stopped: %s stopped or cannot be reached '
                        '(%s); start every worker again with --resume'
                        % (', '.join(where) or 'another worker', type(e).__name__))


# ---------------------------------------------------------------- out of memory
def out_of_memory(error):
    """Whether `error` is an out-of-memory error of Python or of the backend: TensorFlow's
    ResourceExhaustedError (keras 2.2.4 too), JAX's runtime error saying RESOURCE_EXHAUSTED
    (XLA has no type of its own for it), PyTorch's OutOfMemoryError or CPU allocator failure."""
    if isinstance(error, MemoryError):
        return True
    if BACKEND == 'tensorflow':
        import tensorflow as tf
        return isinstance(error, tf.errors.ResourceExhaustedError)
    if BACKEND == 'jax':
        return isinstance(error, RuntimeError) and 'RESOURCE_EXHAUSTED' in str(error)
    if BACKEND == 'torch':
        import torch
        return isinstance(error, torch.OutOfMemoryError) or (
            isinstance(error, RuntimeError) and 'not enough memory' in str(error))
    return False


def out_of_memory_error(message):
    """An instance of the backend's out-of-memory error (what `out_of_memory` recognises),
    for tests that simulate running out of memory."""
    if BACKEND == 'tensorflow':
        import tensorflow as tf
        return tf.errors.ResourceExhaustedError(None, None, message)
    if BACKEND == 'jax':
        from jax.errors import JaxRuntimeError
        return JaxRuntimeError('RESOURCE_EXHAUSTED: %s' % message)
    if BACKEND == 'torch':
        import torch
        return torch.OutOfMemoryError(message)
    return MemoryError(message)


@contextlib.contextmanager
def out_of_memory_hint(doing, sizes):
    """Turns the backend's out-of-memory error (out_of_memory) inside the block into
    one UserError line naming the sizes to lower: a raw one is a long traceback that says
    which tensor, not which flag."""
    try:
        yield
    except Exception as e:
        if not out_of_memory(e):
            raise
        if not sizes:  # --model efficient: its sizes are fixed
            raise UserError('out of memory while %s: no flag makes it smaller; use a machine '
                            'with more memory' % doing)
        raise UserError('out of memory while %s: lower %s' % (doing, ' or '.join(sizes)))


# ---------------------------------------------------------------- CPU threads
def configure_threads(threads=None):
    """Caps the CPU threads the backend's ops use; call at start-up, before the first tensor.

    threads: int, or None to read the CAPSNET_THREADS environment variable; unset or 0
    leaves the backend's default (one thread per core). On a CPU shared with other busy
    processes, CAPSNET_THREADS=1 was measured ~1.4x (TensorFlow) and ~1.6x (PyTorch)
    faster per training step (README, Speed). TensorFlow: intra-op N, inter-op 1;
    PyTorch: torch.set_num_threads(N); JAX: not settable here (XLA_FLAGS). Returns N or 0.
    """
    if threads is None:
        try:
            threads = int(os.environ.get('CAPSNET_THREADS') or 0)
        except ValueError:
            raise UserError('CAPSNET_THREADS must be an integer, got %r'
                            % os.environ['CAPSNET_THREADS'])
    if threads <= 0:
        return 0
    if BACKEND == 'tensorflow' and KERAS3:
        import tensorflow as tf
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # runtime already started: keep its settings
            return 0
    elif BACKEND == 'tensorflow':
        import tensorflow as tf
        v1 = getattr(tf, 'compat', tf).v1 if hasattr(tf, 'compat') else tf
        config = v1.ConfigProto(intra_op_parallelism_threads=threads,
                                inter_op_parallelism_threads=1)
        _K.set_session(v1.Session(config=config))
    elif BACKEND == 'torch':
        import torch
        torch.set_num_threads(threads)
    else:
        return 0
    return threads
