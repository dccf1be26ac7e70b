"""The shim that lets the real keras 2.2.4 run on TensorFlow 2 (tf.compat.v1 graph mode), Python
3.11 and h5py 3, as it ran on TF 1.15 / Python 3.7 / h5py 2.10. Python imports a sitecustomize
module at start-up when its folder is on PYTHONPATH (env.sh from tests/legacy/setup.sh).

It restores only what this repo's code and tests reach (tests/legacy/README.md: how each was
found, what was left out, the limits). Each restoration is numbered; the why is beside it.
"""
import collections
import collections.abc
import sys
import types

import h5py
import numpy as np
import tensorflow as tf
from tensorflow.python.framework import ops as _ops
from tensorflow.python.types import internal as _internal

# 1. TF 1 runtime: graph mode, RefVariables, v1 control flow and TensorShape. keras 2.2.4 builds
#    placeholders and runs a tf.Session; eager TF refuses tf.placeholder outright.
tf.compat.v1.disable_v2_behavior()

# 2. The TF 1 API on the `tensorflow` module keras 2.2.4 imports: every public tf.compat.v1
#    name, replacing the TF 2 one of the same name. Submodules must be v1 whole (tf.train.Optimizer,
#    tf.summary.FileWriter exist only there), and same-named TF 2 functions mean other things
#    (tf.nn.dropout's 2nd argument is the rate in TF 2, keep_prob in keras 2.2.4's call).
#    tf.compat and tf.keras stay TF 2's (tf.keras would load keras 2.2.4 from PYTHONPATH).
for _name in dir(tf.compat.v1):
    if not _name.startswith('_') and _name not in ('compat', 'keras'):
        setattr(tf, _name, getattr(tf.compat.v1, _name))

# 3. keras.backend.is_tensor (reached by every Input and layer call) checks
#    tensorflow.python.framework.ops._TensorLike, TF 1's base of Tensor, SparseTensor and
#    IndexedSlices; TF 2 renamed it NativeObject.
_ops._TensorLike = _internal.NativeObject

# 4. tf.contrib is gone. keras' TensorBoard callback (this repo's --debug) imports
#    tensorflow.contrib.tensorboard.plugins.projector in __init__ and uses it only for embeddings
#    (embeddings_freq > 0, never set here): an empty module answers the import.
_contrib = 'tensorflow.contrib.tensorboard.plugins'
for _module in (_contrib.rsplit('.', 2)[0], _contrib.rsplit('.', 1)[0], _contrib,
                _contrib + '.projector'):
    sys.modules.setdefault(_module, types.ModuleType(_module))
sys.modules[_contrib].projector = sys.modules[_contrib + '.projector']

# 5. h5py 2.10's string attributes, which keras 2.2.4's weights files rely on:
#    read:  h5py 3 gives variable-length strings as str; h5py 2 gave ASCII ones as bytes, and
#           keras 2.2.4's load_weights calls .decode('utf8') on them (keras_version, backend).
#    write: h5py 3 stores a list of bytes (layer_names, weight_names) as variable-length
#           strings; h5py 2 as a fixed-length 'S' array (np.asarray). Kept, so the file
#           keras 2.2.4's save_weights writes (tests/fixtures/make_fixtures.py legacy) has the
#           layout a real keras 2.2.4 file has.
_get_attr, _set_attr = h5py.AttributeManager.__getitem__, h5py.AttributeManager.__setitem__


def _get_attr_as_h5py2(self, name):
    value = _get_attr(self, name)
    kind = h5py.check_string_dtype(self.get_id(name).dtype)
    if kind and kind.length is None and kind.encoding == 'ascii':
        to_bytes = lambda text: text.encode('utf-8', 'surrogateescape')  # noqa: E731
        value = (to_bytes(value) if isinstance(value, str)
                 else np.vectorize(to_bytes, otypes=[object])(value))
    return value


def _set_attr_as_h5py2(self, name, value):
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, bytes) for v in value):
        value = np.asarray(value)
    _set_attr(self, name, value)


h5py.AttributeManager.__getitem__ = _get_attr_as_h5py2
h5py.AttributeManager.__setitem__ = _set_attr_as_h5py2

# 6. Python 3.10 removed the ABC aliases from `collections`; keras/callbacks.py (imported by
#    `import keras`) does `from collections import Iterable`.
collections.Iterable = collections.abc.Iterable
