"""The weights files: the legacy Keras HDF5 layout, written and read with h5py on every stack.

Keras 3 refuses save_weights('x.h5'), and keras 2.2.4 cannot read Keras 3's .weights.h5; so
this repo writes the layout keras 2.2.4's save_weights writes (which every Keras reads) and
reads that layout, keras 2.2.4 full-model files (their weights only, never their config) and
Keras 3 .weights.h5 files, by layer name, with one-line errors for what does not fit.
"""
import os
import re
import zipfile

import numpy as np

from compat import BACKEND, keras
from safeio import UserError, atomic_write


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


def _check_numbers(array, layer_name, path):
    """UserError unless array holds finite real numbers: strings (even '0.5'), complex values
    (NumPy would drop their imaginary part with a warning) and NaN/inf would load silently and
    train or test a broken model, or be written on into trained_model.h5."""
    if array.dtype.kind not in 'biuf':
        raise UserError('layer %r: weights in %s are not real numbers (dtype %s)'
                        % (layer_name, path, array.dtype))
    if not np.isfinite(array).all():
        raise UserError('layer %r: weights in %s hold NaN or infinite values' % (layer_name, path))


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
        if zipfile.is_zipfile(path):  # never opened as a model: nothing in it is executed
            raise UserError('%s is a zip archive (a Keras .keras model?), not a weights file: '
                            'load a .keras file with keras.models.load_model, or give the .h5 '
                            'weights it was exported from (export_model.py)' % path)
        raise UserError('not a readable HDF5 weights file (truncated or corrupt?): %s' % path)
    with f:
        try:
            if 'layer_names' in f.attrs or 'model_weights' in f:
                stored = _read_legacy_groups(f)
            else:
                stored = _read_keras3_groups(f, model)
            full_model = 'model_weights' in f
        except (KeyError, OSError, ValueError, RuntimeError, TypeError) as e:
            # TypeError: a layer_names / weight_names attribute that is no list of names
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
            _check_numbers(new, layer.name, path)
        # a float16 file (pretrained/) loads into the model's own (float32) variables
        layer.set_weights([np.asarray(new, dtype=cur.dtype) for cur, new in zip(current, arrays)])
    return 'full-model' if full_model else 'weights'
