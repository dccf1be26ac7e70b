"""The one seam between this repo and the Keras version / backend it runs on.

Every other file imports Keras, tensor ops and weight-file I/O from here, so the
differences between keras==2.2.4 (TensorFlow 1.x graph mode) and Keras 3
(TensorFlow, JAX or PyTorch backend) live in this file only.

What differs, and how it is settled here:
- tensor ops: keras.backend (2.2.4) vs keras.ops (3): thin wrappers with one signature.
- batch_dot: 2.2.4 and Keras >= 2.3 disagree for rank > 3 operands (XifengGuo/CapsNet-Keras
  #104); both agree on rank-3 batched matrix products, the only form used here.
- weights files: Keras 3 refuses save_weights('x.h5'); we write and read the legacy Keras
  HDF5 weights layout with h5py on every stack (see save_weights_h5 / load_weights_h5).
- training on a generator: fit_generator (2.2.4) vs fit (3).
"""
import contextlib
import os
import re

import numpy as np

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow's C++ start-up chatter
import keras  # noqa: E402

KERAS_VERSION = tuple(int(p) for p in keras.__version__.split('.')[:2])
KERAS3 = KERAS_VERSION >= (3, 0)

from keras import layers, models, optimizers, callbacks, initializers  # noqa: E402

if KERAS3:
    from keras import ops as _ops
    BACKEND = keras.backend.backend()
else:
    from keras import backend as _K
    BACKEND = _K.backend()

Layer = layers.Layer
Sequence = keras.utils.Sequence if not KERAS3 else keras.utils.PyDataset


class UserError(Exception):
    """A problem with the user's input (file, flag, data): printed as one line, no traceback."""


# ---------------------------------------------------------------- tensor ops
# One signature each, whichever Keras is underneath.
if KERAS3:
    def reduce_sum(x, axis=None, keepdims=False):
        return _ops.sum(x, axis=axis, keepdims=keepdims)

    def reduce_mean(x, axis=None, keepdims=False):
        return _ops.mean(x, axis=axis, keepdims=keepdims)

    sqrt, square, exp, maximum, relu = _ops.sqrt, _ops.square, _ops.exp, _ops.maximum, _ops.relu
    reshape, expand_dims, zeros_like, cast = _ops.reshape, _ops.expand_dims, _ops.zeros_like, _ops.cast
    argmax, equal, one_hot = _ops.argmax, _ops.equal, _ops.one_hot

    def transpose(x, perm):
        return _ops.transpose(x, perm)

    def softmax(x, axis=-1):
        return _ops.softmax(x, axis=axis)

    def matmul(x, y):
        return _ops.matmul(x, y)

    def floatx():
        return keras.backend.floatx()
else:
    def reduce_sum(x, axis=None, keepdims=False):
        return _K.sum(x, axis=axis, keepdims=keepdims)

    def reduce_mean(x, axis=None, keepdims=False):
        return _K.mean(x, axis=axis, keepdims=keepdims)

    sqrt, square, exp, maximum, relu = _K.sqrt, _K.square, _K.exp, _K.maximum, _K.relu
    reshape, expand_dims, zeros_like, cast = _K.reshape, _K.expand_dims, _K.zeros_like, _K.cast
    argmax, equal, one_hot = _K.argmax, _K.equal, _K.one_hot
    transpose, softmax = _K.permute_dimensions, _K.softmax

    def matmul(x, y):
        return _K.batch_dot(x, y, axes=[x.shape.ndims - 1, y.shape.ndims - 2])

    floatx = _K.floatx


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


# ---------------------------------------------------------------- model helpers
def adam(learning_rate):
    """Adam with the given learning rate (2.2.4 calls it lr, Keras 3 learning_rate)."""
    if KERAS3:
        return optimizers.Adam(learning_rate=learning_rate)
    return optimizers.Adam(lr=learning_rate)


def set_learning_rate(model, value):
    """Sets the optimizer's learning rate in place."""
    if KERAS3:
        model.optimizer.learning_rate.assign(value)
    else:
        _K.set_value(model.optimizer.lr, value)


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
        return model.fit(train_data, **kwargs)
    return model.fit_generator(train_data, steps_per_epoch=len(train_data), workers=workers,
                               use_multiprocessing=workers > 1, **kwargs)


def pack_batch(inputs, targets):
    """One generator batch: Keras 3 wants tuples, keras 2.2.4 lists, of the input/target arrays."""
    if KERAS3:
        return tuple(inputs), tuple(targets)
    return list(inputs), list(targets)


def tensorboard(log_dir, batch_size):
    """TensorBoard callback with weight histograms."""
    if KERAS3:
        return callbacks.TensorBoard(log_dir=log_dir, histogram_freq=1)
    return callbacks.TensorBoard(log_dir=log_dir, batch_size=batch_size, histogram_freq=1)


def clear_session():
    keras.backend.clear_session()


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
    else:
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


def _jax_on_cpu():
    if BACKEND != 'jax':
        return False
    import jax
    return jax.default_backend() == 'cpu'


class Conv2D(layers.Conv2D):
    """keras Conv2D whose strided 'valid' convolutions run as `patches_conv` on JAX on the CPU
    (elsewhere, GPUs included, it is the plain layer). Same weights ([k, k, C, F] kernel,
    bias), same class name, so weights files written with either class load into both."""

    def convolution_op(self, inputs, kernel):
        if (tuple(self.strides) != (1, 1) and self.padding == 'valid'
                and self.data_format == 'channels_last' and tuple(self.dilation_rate) == (1, 1)
                and getattr(self, 'groups', 1) == 1 and _jax_on_cpu()):
            return patches_conv(inputs, kernel, tuple(self.strides))
        return super(Conv2D, self).convolution_op(inputs, kernel)


# ---------------------------------------------------------------- weights files
def _layers_with_weights(model):
    """[(name, [sublayer names], [arrays])] in topological order, nested models flattened
    one level as Keras 2.x writes them (the nested model's group holds its sublayers' weights)."""
    out = []
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        out.append((layer, weights))
    return out


def _weight_names(layer):
    """'<owner>/<var>:0' names as Keras 2.x writes them, for a layer or a nested model."""
    names = []
    owners = layer.layers if hasattr(layer, 'layers') else [layer]
    for owner in owners:
        for w in owner.weights:
            short = w.name.split('/')[-1].split(':')[0]
            names.append('%s/%s:0' % (owner.name, short))
    return names


def atomic_path(path):
    """Temporary name beside path (same extension); os.replace(tmp, path) swaps it in atomically."""
    directory, base = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(base)
    return os.path.join(directory, '.%s.tmp-%d%s' % (stem, os.getpid(), ext))


@contextlib.contextmanager
def atomic_write(path):
    """`with atomic_write(path) as tmp:` write tmp; on success it replaces path in one rename,
    so a crash or a full disk leaves the previous file whole. An OSError becomes a UserError
    naming the file, and the temp file is removed."""
    tmp = atomic_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise UserError('cannot write %s: %s' % (path, e.strerror or e))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_weights_h5(model, path, dtype=None):
    """Writes the model's weights in the legacy Keras HDF5 layout, atomically.

    dtype: store every array as this type (e.g. 'float16' halves the file; loading casts
    back to the model's float32 variables); None keeps the variables' own types.

    Layout (what keras 2.2.4 save_weights writes and every Keras reads): root attrs
    keras_version, backend, layer_names; one group per layer with attr weight_names and
    datasets /<layer>/<owner>/<var>:0. Written to a temp file then renamed, so a crash
    leaves the previous file whole.
    """
    import h5py
    with atomic_write(path) as tmp:
        with h5py.File(tmp, 'w') as f:
            f.attrs['keras_version'] = np.bytes_(keras.__version__)
            f.attrs['backend'] = np.bytes_(BACKEND)
            f.attrs['layer_names'] = [np.bytes_(layer.name) for layer in model.layers]
            for layer in model.layers:
                group = f.create_group(layer.name)
                weights = layer.get_weights()
                names = _weight_names(layer) if weights else []
                group.attrs['weight_names'] = [np.bytes_(n) for n in names]
                for name, value in zip(names, weights):
                    group.create_dataset(name, data=value if dtype is None else value.astype(dtype))


def _decode(value):
    return value.decode('utf8') if isinstance(value, bytes) else str(value)


def _read_legacy_groups(f):
    """{layer name: [arrays]} from a legacy-layout file (weights-only or full-model)."""
    root = f['model_weights'] if 'model_weights' in f else f
    out = {}
    for lname in [_decode(n) for n in root.attrs['layer_names']]:
        group = root[lname]
        names = [_decode(n) for n in group.attrs.get('weight_names', [])]
        out[lname] = [np.asarray(group[n]) for n in names]
    return out


def _snake_case(name):
    """Keras 3's naming of saved layers: 'CapsuleLayer' -> 'capsule_layer', 'Conv2D' -> 'conv2d'."""
    name = re.sub(r'(.)([A-Z][a-z]+)', r'\1_\2', re.sub(r'\W+', '', name))
    return re.sub(r'([a-z])([A-Z])', r'\1_\2', name).lower()


def _keras3_group_names(layer_list):
    """[(layer, group name)] as Keras 3's save_weights names them: by class, not by layer name
    (the 2nd Conv2D is 'conv2d_1'), in the order of model.layers."""
    used, out = {}, []
    for layer in layer_list:
        key = _snake_case(layer.__class__.__name__)
        used[key] = used.get(key, -1) + 1
        out.append((layer, key if used[key] == 0 else '%s_%d' % (key, used[key])))
    return out


def _keras3_arrays(group):
    """Arrays of one saved layer group (vars/0, vars/1, ...)."""
    vars_ = group['vars'] if 'vars' in group else {}
    return [np.asarray(vars_[str(i)]) for i in range(len(vars_))]


def _read_keras3_groups(f, model):
    """{layer name: [arrays]} from a Keras 3 .weights.h5 file (layers/<class name>/vars/<i>)."""
    out = {}
    root = f['layers'] if 'layers' in f else f
    for layer, group_name in _keras3_group_names(model.layers):
        if group_name not in root:
            continue
        group = root[group_name]
        arrays = _keras3_arrays(group)
        if hasattr(layer, 'layers') and 'layers' in group:  # nested model: its sublayers in order
            for sub, sub_name in _keras3_group_names(layer.layers):
                if sub_name in group['layers']:
                    arrays += _keras3_arrays(group['layers'][sub_name])
        out[layer.name] = arrays
    return out


def load_weights_h5(model, path):
    """Loads weights by layer name from a legacy-layout or Keras 3 .h5 file.

    Never deserializes a model (no Lambda, no pickle): arrays only; a full-model file's
    model_config is never read. Raises UserError naming the first missing or mismatching
    layer and both shapes. Returns 'full-model' (a model_weights group was read) or 'weights'.
    """
    import h5py
    if not os.path.isfile(path):
        raise UserError('weights file not found: %s' % path)
    try:
        f = h5py.File(path, 'r')
    except OSError:
        raise UserError('not a readable HDF5 weights file (truncated or corrupt?): %s' % path)
    with f:
        try:
            if 'layer_names' in f.attrs or 'model_weights' in f:
                stored = _read_legacy_groups(f)
            else:
                stored = _read_keras3_groups(f, model)
            full_model = 'model_weights' in f
        except (KeyError, OSError, ValueError, RuntimeError) as e:
            raise UserError('weights file %s is damaged or not a Keras weights file (%s)' % (path, e))
    for layer, current in _layers_with_weights(model):
        if layer.name not in stored:
            raise UserError('weights file %s has no layer %r (another architecture?)'
                            % (path, layer.name))
        arrays = stored[layer.name]
        if len(arrays) != len(current):
            raise UserError('layer %r: model has %d weights, file %s has %d'
                            % (layer.name, len(current), path, len(arrays)))
        for cur, new in zip(current, arrays):
            if cur.shape != new.shape:
                raise UserError('layer %r: model expects weight shape %s, file %s has %s'
                                % (layer.name, cur.shape, path, new.shape))
        # a float16 file (pretrained/) loads into the model's own (float32) variables
        try:
            arrays = [np.asarray(new, dtype=cur.dtype) for cur, new in zip(current, arrays)]
        except (ValueError, TypeError) as e:
            raise UserError('layer %r: weights in %s are not numbers (%s)' % (layer.name, path, e))
        layer.set_weights(arrays)
    return 'full-model' if full_model else 'weights'


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


def save_arrays_npz(arrays, path):
    """Writes a list of arrays to an .npz file atomically (temp file + rename)."""
    with atomic_write(path) as tmp:
        with open(tmp, 'wb') as f:
            np.savez(f, *arrays)


def load_arrays_npz(path):
    """The arrays of an .npz written by save_arrays_npz, in order (no pickle)."""
    with np.load(path, allow_pickle=False) as data:
        return [data['arr_%d' % i] for i in range(len(data.files))]


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


def distribution_scope(n_devices, batch_size):
    """Context manager for data-parallel training on n_devices devices (0 or 1: none).

    Build, compile, train and evaluate the model inside it; it yields `parallel(model)`,
    the model to compile and fit (the model itself except on keras 2.2.4). Each step's
    batch of batch_size images is split evenly between the devices, gradients are summed.
      TensorFlow: tf.distribute.MirroredStrategy over the GPUs (over logical CPU devices
        when there is no GPU); MultiWorkerMirroredStrategy when TF_CONFIG is set.
      JAX: keras.distribution.DataParallel over jax.devices()[:n_devices] (on CPU, start
        with XLA_FLAGS=--xla_force_host_platform_device_count=N).
      keras 2.2.4: keras.utils.multi_gpu_model (GPUs only). PyTorch: not supported.
    """
    import contextlib
    n_devices = int(n_devices or 0)
    multi_worker = BACKEND == 'tensorflow' and bool(os.environ.get('TF_CONFIG'))
    if n_devices <= 1 and not multi_worker:
        return contextlib.nullcontext(lambda model: model)
    if KERAS3 and BACKEND not in ('tensorflow', 'jax'):
        raise UserError('--multi_gpu is not supported on the %s backend (use tensorflow or jax)'
                        % BACKEND)
    if batch_size % max(n_devices, 1):
        raise UserError('--batch_size %d is not divisible by --multi_gpu %d'
                        % (batch_size, n_devices))
    if not KERAS3:
        import tensorflow as tf
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
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        else:
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
    import contextlib

    @contextlib.contextmanager
    def wrapped():
        with scope:
            yield value
    return wrapped()


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
