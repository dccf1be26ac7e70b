"""The one seam between this repo and the Keras version / backend it runs on.

Every other file imports Keras and tensor ops from here, so the differences between
keras==2.2.4 (TensorFlow 1.x graph mode) and Keras 3 (TensorFlow, JAX or PyTorch backend)
are settled here. Contents, by section; [branches] are the versions / backends told apart:
- import: keras (backends.import_keras: TF's start-up lines filtered, one line if it cannot
  load) [TF]; KERAS3,
  BACKEND, Sequence (keras.utils.Sequence / PyDataset) [2.2.4, 3].
- tensor ops: keras.backend (2.2.4) vs keras.ops (3), one signature each; batch_dot (2.2.4 and
  Keras >= 2.3 disagree for rank > 3, XifengGuo/CapsNet-Keras #104: rank 3 only here) [2.2.4, 3].
- saved full models: serializable, keras.saving's registry vs global custom objects [2.2.4, 3].
- model helpers: adam, get_learning_rate, dense_sequential, instance_norm (GroupNormalization
  / own layer), upsampling_bilinear (half-pixel centres / own layer) [2.2.4, 3]; fit
  (fit_generator / fit) [2.2.4, 3; TF: _build_before_tracing]; evaluate_logs, pack_batch,
  tensorboard, clear_session [2.2.4, 3]; set_seed [2.2.4, 3; TF: op determinism].
- mixed precision: set_precision [2.2.4: none; 3: dtype policies].
- optimizer state (--resume): get_optimizer_state, set_optimizer_state [2.2.4, 3].
- what runs where: gpu_names, stack_line [2.2.4 TF, 3 TF, JAX, torch].
- several devices / machines: distribution_scope [2.2.4 multi_gpu_model; 3: TF MirroredStrategy
  (MultiWorkerMirroredStrategy under TF_CONFIG, mended: _multi_worker_strategy), JAX
  DataParallel; torch: none].
- out of memory: out_of_memory [TF, JAX, torch]. CPU threads: configure_threads [2.2.4 TF, 3 TF,
  torch; JAX: XLA_FLAGS].
Elsewhere, reading KERAS3 / BACKEND from here: convolution.py (the strided convolution's CPU
paths: JAX, TF), runsetup.py (--xla, TF_CONFIG, out-of-memory lines in the CLI's words),
h5weights.py (the weights-file format), benchmarks/tensors.py (numpy in and out, for tests).
User errors and atomic writes are safeio.py's; why a backend cannot load, backends.py's;
TF_CONFIG's addresses and the wait for the other workers, cluster.py's. Errors raised here
speak plain words, naming no CLI flag: the command line adds its flag (capsulenet.flag_named).
"""
import contextlib
import os
import re

import numpy as np

import backends
from cluster import wait_for_workers
from safeio import UserError  # noqa: F401 (raised here; C.UserError for callers)

keras = backends.import_keras()  # one `error:` line, not a traceback, when it cannot load

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
argmax, equal, one_hot, stack = _lib.argmax, _lib.equal, _lib.one_hot, _lib.stack
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


# ---------------------------------------------------------------- saved full models
SERIALIZABLE_PACKAGE = 'capsnet'


def serializable(cls):
    """Class decorator: registers a custom layer so that, once its module is imported, a plain
    keras.models.load_model reads a full model holding it, without custom_objects. Keras 3:
    keras.saving.register_keras_serializable, saved as 'capsnet>Name' (safe mode allows
    registered classes: nothing in the file is executed); keras 2.2.4: the global custom
    objects, by class name, except a class named as a built-in layer (convolution.Conv2D): that name
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
        verbose=1, workers=1, validation_batch_size=None):
    """Trains on a keras Sequence / PyDataset of ((inputs), (targets)) batches, prepared by
    `workers` processes (1: in this one; Keras 3 reads it from the PyDataset).
    validation_batch_size: of the validation arrays on Keras 3 (its default: 32); keras
    2.2.4 validates at the size of the last training batch."""
    # shuffle=False: the Sequence shuffles its samples itself, reproducibly (Keras would
    # also permute the batch order with Python's random, differently on several devices)
    kwargs = dict(epochs=epochs, validation_data=validation_data, callbacks=callbacks_list,
                  initial_epoch=initial_epoch, verbose=verbose, shuffle=False)
    if KERAS3:
        _build_before_tracing(model, train_data)
        return model.fit(train_data, validation_batch_size=validation_batch_size, **kwargs)
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


def tensorboard(log_dir, batch_size):
    """TensorBoard callback with weight histograms (runsetup.check_tensorboard first)."""
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
            raise UserError('mixed precision needs Keras 3 (keras %s has no mixed-precision '
                            'policies)' % keras.__version__)
        return
    keras.mixed_precision.set_global_policy(PRECISIONS[name])


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
            raise UserError('only %d GPU(s) visible' % len(gpus))
        return ['/gpu:%d' % i for i in range(n_devices)]
    cpu = tf.config.list_physical_devices('CPU')[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n_devices)])
    except RuntimeError:  # runtime already started: use what it has
        pass
    cpus = tf.config.list_logical_devices('CPU')
    if len(cpus) < n_devices:
        raise UserError('no GPU and only %d CPU device(s)' % len(cpus))
    print('No GPU: data-parallel over %d logical CPU devices (a test set-up, not faster)'
          % n_devices)
    return [d.name for d in cpus[:n_devices]]


def distribution_scope(n_devices, batch_size, worker=None,
                       restart='start every worker again, resuming from its last checkpoint'):
    """Context manager for data-parallel training on n_devices devices (0 or 1: none), or on
    every worker of a TF_CONFIG cluster (worker: this process's runsetup.multi_worker_task()).

    Build, compile, train and evaluate the model inside it; it yields `parallel(model)`,
    the model to compile and fit (the model itself except on keras 2.2.4). Each step's
    batch of batch_size images is split evenly between the devices, gradients are summed.
      TensorFlow: tf.distribute.MirroredStrategy over the GPUs (over logical CPU devices
        when there is no GPU); MultiWorkerMirroredStrategy when TF_CONFIG is set (then a
        worker that stops ends the others with a UserError, see _lost_workers_as_user_error).
      JAX: keras.distribution.DataParallel over jax.devices()[:n_devices] (on CPU, start
        with XLA_FLAGS=--xla_force_host_platform_device_count=N).
      keras 2.2.4: keras.utils.multi_gpu_model (GPUs only). PyTorch: not supported.
    A set-up that cannot hold is a UserError in plain words; the CLI names its flag.
    restart: what to do when a worker is lost, in the caller's words.
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
        raise UserError('data-parallel training is not supported on the %s backend (use '
                        'tensorflow or jax)' % BACKEND)
    if batch_size % max(n_devices, 1):
        raise UserError('batch size %d is not divisible by %d devices' % (batch_size, n_devices))
    if not KERAS3:
        gpus = [d for d in _K.get_session().list_devices() if 'GPU' in d.device_type]
        if len(gpus) < n_devices:
            raise UserError('keras 2.2.4 needs %d GPUs (multi_gpu_model), found %d'
                            % (n_devices, len(gpus)))
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
            return _lost_workers_as_user_error(strategy.scope(), lambda model: model,
                                               restart)
        strategy = tf.distribute.MirroredStrategy(_tf_devices(n_devices))
        print('Data-parallel training: tf.distribute %s, %d replicas'
              % (type(strategy).__name__, strategy.num_replicas_in_sync))
        return _yielding(strategy.scope(), lambda model: model)
    if BACKEND == 'jax':
        import jax
        devices = jax.devices()
        if len(devices) < n_devices:
            raise UserError('JAX sees %d device(s) (on CPU, set XLA_FLAGS='
                            '--xla_force_host_platform_device_count=%d)'
                            % (len(devices), n_devices))
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
def _lost_workers_as_user_error(scope, value, restart):
    """`scope` (entering it gives `value`), where a collective op that fails because another
    worker stopped (killed, crashed, unreachable: TensorFlow's coordination service notices
    within seconds) becomes one UserError naming the worker and ending in `restart` (what
    to do), instead of a page of graph traceback."""
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
                        '(%s); %s' % (', '.join(where) or 'another worker', type(e).__name__,
                                      restart))


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
