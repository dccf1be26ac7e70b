"""A run's flags against the machine, in the command line's words: which --xla combinations
Keras can honour (XLA_MODES, xla_compile_options, check_xla), this process's task in a
TF_CONFIG cluster (multi_worker_task), and the backend's out-of-memory error as one line
naming the flags to lower (out_of_memory_hint). The Keras-version and backend facts they
read are compat's; the words that name flags are here, beside the command line's other checks.
"""
import collections
import contextlib
import json
import os

import backends
from cluster import parse_address as parse_cluster_address
from compat import BACKEND, KERAS3, keras, out_of_memory
from safeio import UserError


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


# ---------------------------------------------------------------- out of memory
@contextlib.contextmanager
def out_of_memory_hint(doing, sizes):
    """Turns the backend's out-of-memory error (compat.out_of_memory) inside the block into
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


def check_tensorboard():
    """UserError unless the TensorBoard callback can run: Keras 3 writes its logs with
    tf.summary, which needs the tensorboard package (and tensorflow, whatever the backend);
    keras 2.2.4 writes them with TensorFlow alone, but they are read with tensorboard. Checked
    before the data are loaded: it would fail once training starts (TBNotInstalledError)."""
    missing = [p for p in ('tensorboard', 'tensorflow') if not backends.installed(p)]
    if missing:
        raise UserError('--debug writes TensorBoard logs, and %s is not installed: pip install %s'
                        % (' or '.join(missing), ' '.join(missing)))
