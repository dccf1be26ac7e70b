"""Helpers shared by the test files: run the CLI, write idx files and fake MNIST folders."""
import gzip
import os
import struct
import subprocess
import sys

import numpy as np

import utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args, timeout=900):
    """Runs `python capsulenet.py args...` in the repo root: (exit code, stdout, stderr)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', MPLBACKEND='Agg')
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'capsulenet.py')] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                          universal_newlines=True, timeout=timeout, cwd=ROOT)
    return proc.returncode, proc.stdout, proc.stderr


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
