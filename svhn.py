"""SVHN: a reader for the cropped-digit MATLAB files and the paper's SVHN settings (§7).

Files, from http://ufldl.stanford.edu/housenumbers/ ("Format 2: cropped digits"), in
--svhn_dir (default data/svhn/): train_32x32.mat (73,257 digits) and test_32x32.mat (26,032);
extra_32x32.mat is not used (the paper trained on the 73,257 only). Each is a MATLAB v5 file
with X: uint8 [32, 32, 3, N] (row, column, RGB, image) and y: [N, 1] labels 1..10, where 10
stands for the digit 0. Read with scipy.io.loadmat.

The paper (§7): 4.3 % test error; conv1 with 64 channels, 16 primary capsule types of 6
dimensions and 8-dimensional final capsules. CAPSNET holds them as capsulenet.CapsNet keywords.
"""
import os

import numpy as np

from data_errors import DataError

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DIR = os.path.join(HERE, 'data', 'svhn')
URL = 'http://ufldl.stanford.edu/housenumbers/'
FILES = {'train': 'train_32x32.mat', 'test': 'test_32x32.mat'}
N_CLASS = 10
SIZE = 32

# The paper's SVHN network (§7) as capsulenet.CapsNet keywords.
CAPSNET = dict(conv1_filters=64, primary_channels=16, primary_dim=6, digit_dim=8)


def load_split(path):
    """One file -> (x uint8 [N, 32, 32, 3], y int64 [N] in 0..9: label 10 becomes digit 0).
    DataError in one line for an unreadable file, missing X / y, or wrong shapes or labels."""
    import scipy.io
    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:  # ValueError, TypeError, MatReadError, NotImplementedError (v7.3)...
        raise DataError('%s is not a readable MATLAB v5 .mat file (%s)' % (path, e))
    missing = [k for k in ('X', 'y') if k not in mat]
    if missing:
        raise DataError('%s has no %s (variables: %s): not an SVHN cropped-digit file'
                        % (path, ' or '.join(missing),
                           ', '.join(k for k in mat if not k.startswith('__')) or 'none'))
    x, y = np.asarray(mat['X']), np.asarray(mat['y'])
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (SIZE, SIZE, 3):
        raise DataError('%s: X is %s %s, expected uint8 [32, 32, 3, N]'
                        % (path, x.dtype.name, list(x.shape)))
    if y.dtype.kind not in 'iuf' or y.size != x.shape[3] or y.ndim > 2 or \
            (y.ndim == 2 and 1 not in y.shape):
        raise DataError('%s: y is %s %s, expected %d labels [N, 1] for X\'s %d images'
                        % (path, y.dtype.name, list(y.shape), x.shape[3], x.shape[3]))
    if x.shape[3] == 0:
        raise DataError('%s holds no images' % path)
    labels = y.reshape(-1)
    if np.any(labels != np.round(labels)) or labels.min() < 1 or labels.max() > 10:
        raise DataError('%s: labels go from %s to %s, expected 1..10 (10: the digit 0)'
                        % (path, labels.min(), labels.max()))
    labels = labels.astype('int64') % 10
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2)), labels


def load_svhn(folder=None):
    """((x_train, y_train), (x_test, y_test)) from folder (default data/svhn/): x uint8
    [N, 32, 32, 3], y int64 [N] in 0..9. DataError naming every missing file and the URL."""
    folder = folder or DEFAULT_DIR
    paths = {split: os.path.join(folder, name) for split, name in FILES.items()}
    missing = [FILES[s] for s in ('train', 'test') if not os.path.isfile(paths[s])]
    if missing:
        raise DataError('SVHN files missing in %s: %s (cropped digits, format 2, from %s); put '
                        'them there or pass --svhn_dir (default data/svhn/)'
                        % (folder, ', '.join(missing), URL))
    return load_split(paths['train']), load_split(paths['test'])
