"""Helpers shared by the test files: the repo root, tiny-model settings, one runner for the
command lines (in-process `main(argv)` or a subprocess), idx files and fake MNIST folders."""
import gzip
import os
import struct
import subprocess
import sys

import numpy as np

import utils
from conftest import ROOT

# tiny CapsNets: architecture flags for the CLI and the same as CapsNet keyword arguments
TINY_FLAGS = ['--conv1_filters', '16', '--primary_channels', '4']
TINY = dict(conv1_filters=16, primary_channels=4)
# smaller CapsNets (keyword arguments) for tests that build a model and need no CLI training:
# SMALL for graph and weights checks, MINI for the viewer (16 capsule dimensions, the default),
# NANO where only the layers' dtypes or the file format matter
SMALL = dict(conv1_filters=16, primary_channels=4, primary_dim=4, digit_dim=8,
             decoder_units=(32, 64))
MINI = dict(conv1_filters=8, primary_channels=2, primary_dim=4, decoder_units=(16, 32))
NANO = dict(conv1_filters=8, primary_channels=2, decoder_units=(8, 8))


def run_python(*args, timeout=900, **env):
    """Runs `python args...` in the repo root -> CompletedProcess (text output). env: extra
    environment variables; one set to None is removed."""
    env = dict(dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', MPLBACKEND='Agg'), **env)
    env = {k: v for k, v in env.items() if v is not None}
    return subprocess.run([sys.executable] + [str(a) for a in args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env, universal_newlines=True,
                          timeout=timeout, cwd=ROOT)


def run_script(script, *args, timeout=900, **env):
    """Runs `python <script> args...` (script relative to the repo root), as run_python."""
    return run_python(os.path.join(ROOT, script), *args, timeout=timeout, **env)


def run_main(capsys, *argv, main=None):
    """capsulenet.main(argv) (or another main) in-process, on a fresh Keras session
    -> (exit code, stdout, stderr); argparse's exit on a bad flag is an exit code too."""
    import compat as C
    if main is None:
        import capsulenet
        main = capsulenet.main
    C.clear_session(free_memory=False)
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code, err, message):
    """Exit code not 0, stderr's last line is its only `error:` line and names `message`."""
    assert code not in (0, None)
    lines = [l for l in err.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith('error:')]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert message in errors[0], errors[0]
    assert 'Traceback' not in err


def accuracy_from(stdout):
    """The accuracy printed on the CLI's last 'Test accuracy:' line."""
    line = [l for l in stdout.splitlines() if l.startswith('Test accuracy:')][-1]
    return float(line.split()[2])


def assert_image(path, min_std=0.02):
    """path is an image of at least 28x28 pixels that is not blank."""
    import matplotlib.image
    assert os.path.isfile(path), path
    image = matplotlib.image.imread(path)
    assert image.shape[0] >= 28 and image.shape[1] >= 28
    assert image.std() > min_std, '%s looks blank' % path


def idx_bytes(array, magic=None):
    """The bytes of an idx file holding array as uint8 (magic 0x08nn unless given)."""
    array = np.asarray(array, dtype='uint8')
    magic = 0x800 + array.ndim if magic is None else magic
    return struct.pack('>%dI' % (1 + array.ndim), magic, *array.shape) + array.tobytes()


def write_idx(path, array, magic=None, gz=False, cut=0):
    """Writes an idx file (gzipped if gz), dropping its last `cut` bytes."""
    data = idx_bytes(array, magic)
    opener = gzip.open if gz else open
    with opener(path, 'wb') as f:
        f.write(data[:len(data) - cut])


def fake_mnist(folder, n_train=20, n_test=10, gz=True, style=0, **overrides):
    """Four idx files of random digits in folder (naming style 0 or 1); overrides[key] passes
    write_idx arguments (and 'array') for one file. Returns the arrays."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(0)
    arrays = {'train_images': rng.randint(0, 256, (n_train, 28, 28)),
              'train_labels': rng.randint(0, 10, n_train),
              'test_images': rng.randint(0, 256, (n_test, 28, 28)),
              'test_labels': rng.randint(0, 10, n_test)}
    for key, array in arrays.items():
        name = utils.MNIST_FILES[key][style] + ('.gz' if gz else '')
        kwargs = dict(overrides.get(key, {}))
        write_idx(os.path.join(folder, name), kwargs.pop('array', array), gz=gz, **kwargs)
    return arrays


def out_of_memory_error(message):
    """An instance of the backend's out-of-memory error (what compat.out_of_memory recognises),
    for tests that simulate running out of memory."""
    from compat import BACKEND
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
