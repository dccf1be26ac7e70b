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
    with atomic_write(path) as tmp:
        try:
            _write_layers(model, tmp, dtype)
        except RuntimeError as e:
            # a write that fails at a flush (full disk, file size limit) comes from h5py as a
            # RuntimeError, not an OSError: "Can't decrement id ref count (unable to extend
            # file properly, errno = 27, error message = 'File too large')" (measured)
            raise UserError('cannot write %s: %s' % (path, e))


def _write_layers(model, path, dtype):
    """save_weights_h5's file, written at path in place."""
    import h5py
    with h5py.File(path, 'w') as f:
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


# more names than any Keras model has layers: a bigger names attribute is no weights file's
MAX_NAMES = 1 << 16
# soft links followed to find one object, at most: beyond, a loop (or a maze of links)
MAX_LINK_HOPS = 16


def _get(group, path, file_path, hops_left=None):
    """The h5py object at path ('a/b/c') under group, or None where nothing is there.

    Opens one link at a time, asking each link's type first: hard and soft links (soft ones
    point inside the same file) are followed, MAX_LINK_HOPS soft ones at most in all; an
    external link, or a link of a user-defined type, would open another file and is refused
    before anything is read through it. hops_left: [soft links still allowed], shared by the
    nested calls that resolve soft links.
    """
    import h5py
    from h5py import h5l
    hops_left = [MAX_LINK_HOPS] if hops_left is None else hops_left
    node = group.file if path.startswith('/') else group
    for part in [p for p in path.split('/') if p not in ('', '.')]:
        if not isinstance(node, h5py.Group):
            return None
        name, links, where = part.encode('utf8'), node.id.links, node.name.rstrip('/')
        if not links.exists(name):
            return None
        kind = links.get_info(name).type
        if kind == h5l.TYPE_HARD:
            node = node[part]
        elif kind == h5l.TYPE_SOFT:
            hops_left[0] -= 1
            if hops_left[0] < 0:
                raise UserError('weights file %s: soft link %s/%s is part of a loop (or a chain '
                                'of over %d links)' % (file_path, where, part, MAX_LINK_HOPS))
            node = _get(node, _decode(links.get_val(name)), file_path, hops_left)
            if node is None:
                return None
        else:
            raise UserError('weights file %s: %s/%s is a link to another file; refused (a '
                            'weights file must hold its own arrays)' % (file_path, where, part))
    return node


def _group(parent, name, file_path):
    """The group parent/name (links as _get), or None where there is none."""
    import h5py
    node = _get(parent, name, file_path)
    if node is not None and not isinstance(node, h5py.Group):
        raise UserError('weights file %s: %s is not a group (damaged?)' % (file_path, node.name))
    return node


def _names(obj, key, file_path):
    """The names listed in attribute key of obj ([] without one), their count checked before
    the attribute is read."""
    if key not in obj.attrs:
        return []
    shape = obj.attrs.get_id(key).shape
    if shape is None or int(np.prod(shape, dtype=np.float64)) > MAX_NAMES:
        raise UserError('weights file %s: attribute %s of %s declares %s names (damaged?)'
                        % (file_path, key, obj.name, shape))
    return [_decode(n) for n in obj.attrs[key]]


def _legacy_refs(f, model, file_path):
    """{layer name: [(group, dataset name)]} for the model's layers in a legacy-layout file
    (weights-only, or full-model: under model_weights); nothing read but names."""
    root = _group(f, 'model_weights', file_path)
    root = f if root is None else root
    listed = set(_names(root, 'layer_names', file_path))
    out = {}
    for layer in model.layers:
        if layer.name not in listed:
            continue
        group = _group(root, layer.name, file_path)
        if group is None:
            raise UserError('weights file %s lists layer %r but holds no group for it (damaged?)'
                            % (file_path, layer.name))
        out[layer.name] = [(group, n) for n in _names(group, 'weight_names', file_path)]
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


def _keras3_refs(group, file_path):
    """[(vars group, '0'), (vars group, '1'), ...]: one saved layer group's weights, unread."""
    vars_ = _group(group, 'vars', file_path)
    return [(vars_, str(i)) for i in range(len(vars_))] if vars_ is not None else []


def _read_keras3_refs(f, model, file_path):
    """{layer name: [(group, dataset name)]} from a Keras 3 .weights.h5 file
    (layers/<class name>/vars/<i>); nothing read but names."""
    out = {}
    root = _group(f, 'layers', file_path)
    root = f if root is None else root
    for layer, group_name in _keras3_group_names(model.layers):
        group = _group(root, group_name, file_path)
        if group is None:
            continue
        refs = _keras3_refs(group, file_path)
        sublayers = _group(group, 'layers', file_path) if hasattr(layer, 'layers') else None
        if sublayers is not None:  # nested model: its sublayers in order
            for sub, sub_name in _keras3_group_names(layer.layers):
                sub_group = _group(sublayers, sub_name, file_path)
                if sub_group is not None:
                    refs += _keras3_refs(sub_group, file_path)
        out[layer.name] = refs
    return out


def _check_storage(dataset, layer_name, file_path):
    """UserError unless dataset keeps its data in this file: external raw storage and virtual
    datasets would read bytes of other files into the model."""
    from h5py import h5d
    plist = dataset.id.get_create_plist()
    if plist.get_external_count() > 0:
        raise UserError('layer %r: dataset %s in %s stores its data in another file (external '
                        'storage); refused' % (layer_name, dataset.name, file_path))
    if plist.get_layout() == getattr(h5d, 'VIRTUAL', -1):
        raise UserError('layer %r: dataset %s in %s is a virtual dataset (data from other '
                        'files); refused' % (layer_name, dataset.name, file_path))


def _check_declared(dataset, current, layer_name, file_path):
    """UserError unless dataset's declared storage, shape and type fit the model's weight
    `current` (an array), checked from the file's metadata before any array is read: a few
    KB can declare a (2^40, 2^20) dataset. Equal shapes and at most 8-byte numbers bound
    what is read to twice the model's float32 weights."""
    _check_storage(dataset, layer_name, file_path)
    if dataset.shape != current.shape:
        raise UserError('layer %r: model expects weight shape %s, file %s has %s (dataset %s); '
                        'was it trained as another network (--model, --dataset or the '
                        'architecture flags)?'
                        % (layer_name, current.shape, file_path, dataset.shape, dataset.name))
    if dataset.dtype.kind not in 'biuf':  # strings (even '0.5'), complex, compound, ...
        raise UserError('layer %r: weights in %s are not real numbers (dtype %s, dataset %s)'
                        % (layer_name, file_path, dataset.dtype, dataset.name))
    if dataset.dtype.itemsize > 8:
        raise UserError('layer %r: weights in %s are wider than 64 bits (dtype %s, dataset %s)'
                        % (layer_name, file_path, dataset.dtype, dataset.name))
    # HDF5 inflates a whole chunk to read any of it, and a resizable dataset's chunks may be
    # far larger than its data
    chunks, itemsize = dataset.chunks, dataset.dtype.itemsize
    limit = max(int(np.prod(current.shape)) * itemsize, 1 << 20)
    if chunks is not None and int(np.prod(chunks, dtype=np.float64)) * itemsize > limit:
        raise UserError('layer %r: dataset %s in %s has chunks %s, larger than its data '
                        '(damaged?)' % (layer_name, dataset.name, file_path, chunks))


def _datasets(layer_name, current, refs, file_path):
    """The h5py datasets of one layer's weights, each checked against the model's arrays
    `current` before any is read."""
    import h5py
    if len(refs) != len(current):
        raise UserError('layer %r: model has %d weights, file %s has %d'
                        % (layer_name, len(current), file_path, len(refs)))
    out = []
    for cur, (group, name) in zip(current, refs):
        dataset = _get(group, name, file_path)
        if not isinstance(dataset, h5py.Dataset):
            raise UserError('layer %r: weights file %s has no dataset %s/%s (damaged?)'
                            % (layer_name, file_path, group.name.rstrip('/'), name))
        _check_declared(dataset, cur, layer_name, file_path)
        out.append(dataset)
    return out


def _read_as(dataset, current, layer_name, file_path):
    """dataset's array cast to the model's dtype (a float16 file loads into float32
    variables), UserError unless finite after the cast: a float64 1e300 is inf in float32;
    NaN/inf would load silently and train or test a broken model."""
    with np.errstate(over='ignore', invalid='ignore'):
        array = np.asarray(dataset[()]).astype(current.dtype)
    if array.dtype.kind == 'f' and not np.isfinite(array).all():
        raise UserError('layer %r: weights in %s hold NaN or infinite values as %s (dataset %s)'
                        % (layer_name, file_path, array.dtype, dataset.name))
    return array


def _load_checked(model, f, path):
    """[(layer, [arrays])] for every model layer with weights, every dataset checked before
    any is read; the model is not changed."""
    legacy = 'layer_names' in f.attrs or _group(f, 'model_weights', path) is not None
    stored = _legacy_refs(f, model, path) if legacy else _read_keras3_refs(f, model, path)
    plan = []
    for layer, current in _layers_with_weights(model):
        if layer.name not in stored:
            raise UserError('weights file %s has no layer %r (another architecture?)'
                            % (path, layer.name))
        plan.append((layer, current, _datasets(layer.name, current, stored[layer.name], path)))
    return [(layer, [_read_as(d, cur, layer.name, path) for d, cur in zip(datasets, current)])
            for layer, current, datasets in plan]


def load_weights_h5(model, path):
    """Loads weights by layer name from a legacy-layout or Keras 3 .h5 file.

    Never deserializes a model (no Lambda, no pickle): arrays only; a full-model file's
    model_config is never read. Nothing outside the file is read (external links and storage
    are refused), no array before every declared shape and type fits the model, and the model
    is changed only once all fit. Raises UserError naming the first missing or mismatching
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
            loaded = _load_checked(model, f, path)
            full_model = _group(f, 'model_weights', path) is not None
        except (KeyError, OSError, ValueError, RuntimeError, TypeError) as e:
            # TypeError: a layer_names / weight_names attribute that is no list of names
            raise UserError('weights file %s is damaged or not a Keras weights file (%s)' % (path, e))
    for layer, arrays in loaded:
        layer.set_weights(arrays)
    return 'full-model' if full_model else 'weights'
