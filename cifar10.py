"""CIFAR-10: a reader for the BINARY version and the paper's CIFAR-10 settings (§7).

Files, from https://www.cs.toronto.edu/~kriz/cifar.html ("CIFAR-10 binary version"), in
--cifar10_dir (default data/cifar10/): cifar-10-binary.tar.gz as downloaded (read in place,
nothing extracted) or its extracted cifar-10-batches-bin/ (or that folder itself), holding
data_batch_1.bin .. data_batch_5.bin (training, 10,000 records each) and test_batch.bin.
A record is 3073 bytes: 1 label byte (0..9), then 3072 bytes of a 32x32 colour image as
three 1024-byte planes (red, green, blue), each row-major. The Python version (pickles) is
never read: unpickling runs code from the file. NumPy only.

The paper (§7): 10.6 % test error with an ensemble of 7 CapsNets, each with 3 routing
iterations on 24x24 patches, three colour channels, 64 primary capsule types and a
"none-of-the-above" routing class; the official code's flags are
num_prime_capsules=64, padding=SAME, leaky=true, remake=false (tensorflow/models
research/capsules). CAPSNET holds what capsulenet.CapsNet takes of this.
"""
import os
import tarfile
import zlib

import numpy as np

import smallnorb
from data_errors import DataError

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DIR = os.path.join(HERE, 'data', 'cifar10')
URL = 'https://www.cs.toronto.edu/~kriz/cifar.html'
ARCHIVE = 'cifar-10-binary.tar.gz'
FOLDER = 'cifar-10-batches-bin'
TRAIN_FILES = tuple('data_batch_%d.bin' % i for i in range(1, 6))
TEST_FILE = 'test_batch.bin'
PYTHON_VERSION = ('cifar-10-python.tar.gz', 'cifar-10-batches-py')  # refused, never unpickled
CLASS_NAMES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
               'truck')
N_CLASS = len(CLASS_NAMES)
SIZE = 32
RECORD = 1 + 3 * SIZE * SIZE  # 3073 bytes
MAX_BYTES = 10 ** 9  # a real batch file is 30,730,000 bytes

# The paper's CIFAR-10 network (§7), as capsulenet.CapsNet keywords: 64 primary capsule types
# and the "none-of-the-above" class in the routing softmax (the official leaky routing);
# 3 routing iterations are CapsNet's default. Input: PATCH x PATCH x 3 crops.
PATCH = 24
CAPSNET = dict(primary_channels=64, leaky_routing=True)


# ---------------------------------------------------------------- reader
def parse_records(data, name):
    """The bytes of one batch file -> (x uint8 [N, 32, 32, 3], y int64 [N] in 0..9).
    DataError when the size is not a whole number of 3073-byte records or a label is > 9."""
    if len(data) == 0 or len(data) % RECORD:
        raise DataError('%s holds %d bytes, not a whole number of %d-byte CIFAR-10 records '
                        '(truncated, or not the binary version?)' % (name, len(data), RECORD))
    records = np.frombuffer(data, dtype='uint8').reshape(-1, RECORD)
    y = records[:, 0].astype('int64')
    if y.max() >= N_CLASS:
        raise DataError('%s: record %d has label %d, expected 0..%d (not a CIFAR-10 binary '
                        'batch? CIFAR-100 records have 2 label bytes)'
                        % (name, int(np.argmax(y >= N_CLASS)), y.max(), N_CLASS - 1))
    x = records[:, 1:].reshape(-1, 3, SIZE, SIZE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), y


def _read_file(path):
    size = os.path.getsize(path)
    if size > MAX_BYTES:
        raise DataError('%s is %d bytes, far more than a CIFAR-10 batch (30,730,000)'
                        % (path, size))
    with open(path, 'rb') as f:
        return f.read()


def _read_member(archive, tar, name):
    """The bytes of cifar-10-batches-bin/<name> inside the open tar."""
    try:
        member = tar.getmember('%s/%s' % (FOLDER, name))
    except KeyError:
        raise DataError('%s has no %s/%s: not the CIFAR-10 binary archive (%s)'
                        % (archive, FOLDER, name, URL))
    if not member.isfile() or member.size > MAX_BYTES:
        raise DataError('%s: %s/%s is not a batch file' % (archive, FOLDER, name))
    return tar.extractfile(member).read()


def find(folder=None):
    """('archive', path) or ('folder', path) of the binary files in or at folder (default
    data/cifar10/): a cifar-10-binary.tar.gz, a folder with cifar-10-batches-bin/ in it, or
    that folder itself. DataError in one line saying where to get them otherwise."""
    folder = folder or DEFAULT_DIR
    if os.path.isfile(folder) and folder.endswith('.tar.gz'):
        return 'archive', folder
    for kind, path in (('folder', folder), ('folder', os.path.join(folder, FOLDER)),
                       ('archive', os.path.join(folder, ARCHIVE))):
        if kind == 'folder' and os.path.isfile(os.path.join(path, TEST_FILE)):
            return kind, path
        if kind == 'archive' and os.path.isfile(path):
            return kind, path
    python = [p for p in PYTHON_VERSION if os.path.exists(os.path.join(folder, p))]
    hint = (' (%s is the Python version, made of pickles, which this reader never loads)'
            % python[0]) if python else ''
    raise DataError('CIFAR-10 files missing in %s%s: put the binary version there (%s or its '
                    'extracted %s/, from %s) or pass --cifar10_dir (default data/cifar10/)'
                    % (folder, hint, ARCHIVE, FOLDER, URL))


def load_cifar10(folder=None):
    """((x_train, y_train), (x_test, y_test)) of the binary files found by `find`: x uint8
    [N, 32, 32, 3] (real files: 50,000 and 10,000), y int64 [N] in 0..9 (CLASS_NAMES)."""
    kind, path = find(folder)
    names = TRAIN_FILES + (TEST_FILE,)
    if kind == 'folder':
        missing = [n for n in names if not os.path.isfile(os.path.join(path, n))]
        if missing:
            raise DataError('CIFAR-10 files missing in %s: %s (the binary version, from %s)'
                            % (path, ', '.join(missing), URL))
        blobs = [(os.path.join(path, n), _read_file(os.path.join(path, n))) for n in names]
    else:
        try:
            with tarfile.open(path, 'r:gz') as tar:
                blobs = [('%s:%s/%s' % (path, FOLDER, n), _read_member(path, tar, n))
                         for n in names]
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise DataError('cannot read %s: %s (corrupt or truncated download?)'
                            % (path, getattr(e, 'strerror', None) or e))
    parts = [parse_records(data, name) for name, data in blobs]
    train = tuple(np.concatenate(arrays) for arrays in zip(*parts[:-1]))
    return train, parts[-1]


# ---------------------------------------------------------------- patches
def center_crop(x, patch=PATCH):
    """The test patches: the centre patch x patch of x [N, 32, 32, C] -> [N, patch, patch, C]."""
    return smallnorb.center_crop(x, patch)


def train_batch(x, y, index_array, seed, epoch, batch_index, patch=PATCH):
    """A training batch, a pure function of (seed, epoch, batch_index): x [N, S, S, C],
    y [N, ...], index_array int [B] -> (uniform random patch x patch crops [B, patch, patch,
    C], y[index_array]); the crop position is drawn per image."""
    index_array = np.asarray(index_array, dtype='int64')
    rng = np.random.RandomState([int(seed) % 2 ** 32, int(epoch), int(batch_index) + 1])
    top = rng.randint(0, x.shape[1] - patch + 1, size=len(index_array))
    left = rng.randint(0, x.shape[2] - patch + 1, size=len(index_array))
    return smallnorb.crop(x[index_array], top, left, patch), np.asarray(y)[index_array]
