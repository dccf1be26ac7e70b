"""Full models that load anywhere (export_model.py): every custom layer is registered and
round-trips its config, no model holds a Lambda, and an exported file loads with a plain
keras.models.load_model (safe mode on Keras 3, no custom_objects) in a fresh process that
imports only capsulelayers, predicting the capsule lengths of the weights file."""
import json
import os

import numpy as np
import pytest

from conftest import ROOT
from helpers import NANO, SMALL, assert_one_error_line, run_main, run_python

import capsulelayers
import capsulenet
import compat as C
import export_model
import h5weights
import modelcard
import utils
from safeio import UserError

pytestmark = pytest.mark.stack

# every builder and form: CapsNet (Mask by rank), Efficient-CapsNet for MNIST, smallNORB
# (instance norm, bilinear upsampling, functional decoder) and MultiMNIST (two masks)
BUILDS = [('capsnet', (28, 28, 1), 10, 'mnist', SMALL),
          ('efficient', (28, 28, 1), 10, 'mnist', {}),
          ('efficient', (48, 48, 2), 5, 'smallnorb', {}),
          ('capsnet', (36, 36, 1), 10, 'multimnist', NANO)]


def all_layers(model):
    """Every layer of model, nested models' layers included."""
    for layer in model.layers:
        yield layer
        if hasattr(layer, 'layers'):
            for sub in all_layers(layer):
                yield sub


def repo_layers(build):
    """{class: a layer of it} of the layers of this repo (capsulelayers, compat) in a build."""
    model, input_shape, n_class, dataset, options = build
    C.clear_session(free_memory=False)
    found = {}
    for m in capsulenet.build_models(model, input_shape, n_class, dataset, **options):
        for layer in all_layers(m):
            assert layer.__class__.__name__ != 'Lambda', layer.name
            if layer.__class__.__module__ in ('capsulelayers', 'compat'):
                found.setdefault(layer.__class__, layer)
    return found


@pytest.mark.parametrize('build', BUILDS, ids=['%s-%s' % (b[0], b[3]) for b in BUILDS])
def test_custom_layers_are_registered_and_round_trip_their_config(build):
    found = repo_layers(build)
    assert capsulelayers.Length in found and capsulelayers.Mask in found
    for cls, layer in found.items():
        config = layer.get_config()
        assert cls.from_config(config).get_config() == config, cls.__name__
        if C.KERAS3:
            assert C.keras.saving.get_registered_object(
                C.keras.saving.get_registered_name(cls)) is cls, cls.__name__
            assert C.keras.saving.get_registered_name(cls) == 'capsnet>' + cls.__name__
        elif not hasattr(C.layers, cls.__name__):  # 2.2.4: a built-in's name loads the built-in
            assert C.keras.utils.get_custom_objects()[cls.__name__] is cls


# the fresh process: only capsulelayers is imported, then keras' own load_model as a user calls it
LOADER = r"""
import json, sys
import numpy as np
import capsulelayers
import keras
out = {}
for path in sys.argv[2:]:
    model = keras.models.load_model(path)
    x = np.load(sys.argv[1])
    out[path] = np.asarray(model.predict(x, verbose=0)[0]).tolist()
print('LENGTHS ' + json.dumps(out))
"""


def exported(tmp_path, model, options):
    """(path of the exported full model, capsule lengths [8, 10] of the first 8 MNIST test
    images from its weights file, loaded the repo's way) for a random-weights model."""
    C.clear_session(free_memory=False)
    train_model, _, _ = capsulenet.build_models(model, (28, 28, 1), 10, **options)
    weights = str(tmp_path / ('%s.h5' % model))
    h5weights.save_weights_h5(train_model, weights)
    out = str(tmp_path / (model + export_model.EXTENSION))
    result = export_model.export(modelcard.MNIST._replace(model=model, options=options),
                                  weights, out)
    assert result['bytes'] == os.path.getsize(out) and result['max_length_difference'] <= 1e-5
    (_, _), (x, _) = utils.load_mnist(train_samples=0, test_samples=8)
    lengths = export_model.lengths_of(export_model.load_eval_model(model, options, weights), x)
    return out, lengths, x


def test_exported_models_load_with_plain_load_model_in_a_fresh_process(tmp_path):
    files, expected = [], {}
    for model, options in [('capsnet', SMALL), ('efficient', {})]:
        path, lengths, x = exported(tmp_path, model, options)
        files.append(path)
        expected[path] = lengths
    images = str(tmp_path / 'x.npy')
    np.save(images, x)
    script = str(tmp_path / 'load.py')
    with open(script, 'w') as f:
        f.write(LOADER)
    done = run_python(script, images, *files, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'Lambda' not in done.stderr
    line = [l for l in done.stdout.splitlines() if l.startswith('LENGTHS ')][-1]
    loaded = json.loads(line[len('LENGTHS '):])
    for path in files:
        got = np.array(loaded[path])
        assert got.shape == (8, 10)
        np.testing.assert_allclose(got, expected[path], rtol=0, atol=1e-6)


def test_the_repos_own_loader_reads_no_model_file(tmp_path):
    """-w with a .keras file is one error: the weights loader never opens a model (Keras 3);
    a 2.2.4 full-model .h5 gives its weights only, as before."""
    path, _, _ = exported(tmp_path, 'capsnet', SMALL)
    C.clear_session(free_memory=False)
    model, _, _ = capsulenet.build_models('capsnet', (28, 28, 1), 10, **SMALL)
    if C.KERAS3:
        with pytest.raises(UserError, match='zip archive'):
            h5weights.load_weights_h5(model, path)
    else:
        assert h5weights.load_weights_h5(model, path) == 'full-model'


def test_command_line_errors_are_one_line(tmp_path, capsys):
    weights = os.path.join(ROOT, 'pretrained', 'efficient_capsnet.h5')
    wrong = str(tmp_path / ('model.zip' if C.KERAS3 else 'model.keras'))
    code, _, err = run_main(capsys, '--model', 'efficient', '-w', weights, '--out', wrong,
                            main=export_model.main)
    assert_one_error_line(code, err, wrong)
    out = str(tmp_path / ('model' + export_model.EXTENSION))
    for argv, named in [(['-w', str(tmp_path / 'none.h5')], 'none.h5'),
                        (['--option', 'colour=1', '-w', weights], 'colour'),
                        (['--model', 'capsnet', '-w', weights], 'efficient_capsnet.h5')]:
        code, _, err = run_main(capsys, '--out', out, *argv, main=export_model.main)
        assert_one_error_line(code, err, named)
    assert os.listdir(str(tmp_path)) == []  # nothing written, not even a temp file
