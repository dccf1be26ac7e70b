"""The shipped models in pretrained/: each file of pretrained/manifest.json loads on this stack
and classifies the first 500 MNIST test images as well as its float32 checkpoint did; and
export_weights.py writes such a file (float16) with its manifest entry."""
import json
import os

import numpy as np
import pytest

from conftest import ROOT
from helpers import TINY, fake_mnist

import capsulenet
import compat as C
import export_weights
import h5weights
import utils

pytestmark = pytest.mark.stack

PRETRAINED = os.path.join(ROOT, 'pretrained')
SHIPPED = ['capsnet_r3.h5', 'efficient_capsnet.h5']  # the files that ship


def manifest():
    path = os.path.join(PRETRAINED, 'manifest.json')
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


@pytest.mark.parametrize('name', SHIPPED)
def test_shipped_file_classifies_the_first_500_test_images(name):
    entry = manifest().get(name)
    if entry is None:
        pytest.skip('%s not trained yet (see pretrained/README.md)' % name)
    path = os.path.join(PRETRAINED, name)
    assert export_weights.sha256(path) == entry['sha256'], 'file differs from its manifest entry'
    n = export_weights.FIRST
    (_, _), (x, y) = utils.load_mnist(train_samples=0, test_samples=n)
    _, acc_first = export_weights.accuracies(entry['model'], entry['options'], path,
                                                   x[:n], y[:n])
    assert acc_first >= 0.99
    # float16 storage costs nothing measurable: the same images right as with float32 weights
    assert abs(acc_first - entry['float32_first%d_accuracy' % n]) <= 0.0002
    assert abs(entry['float16_test_accuracy'] - entry['float32_test_accuracy']) <= 0.0002


def test_shipped_files_are_float16_and_load_into_float32_variables():
    for name, entry in manifest().items():
        path = os.path.join(PRETRAINED, name)
        import h5py
        with h5py.File(path, 'r') as f:
            kinds = set()
            f.visititems(lambda _, obj: kinds.add(obj.dtype) if hasattr(obj, 'dtype') else None)
        assert kinds == {np.dtype('float16')}, (name, kinds)
        C.clear_session(free_memory=False)
        model, _, _ = capsulenet.build_models(entry['model'], (28, 28, 1), 10,
                                              **entry['options'])
        h5weights.load_weights_h5(model, path)
        assert all(w.dtype == np.float32 for w in model.get_weights())


def test_export_writes_float16_file_and_manifest(tmp_path):
    data_dir = str(tmp_path / 'mnist')
    fake_mnist(data_dir, n_train=20, n_test=40)
    C.clear_session(free_memory=False)
    model, _, _ = capsulenet.build_models('capsnet', (28, 28, 1), 10, **TINY)
    source = str(tmp_path / 'checkpoint.h5')
    h5weights.save_weights_h5(model, source)
    out = str(tmp_path / 'shipped' / 'tiny.h5')
    os.makedirs(os.path.dirname(out))
    entry = export_weights.export('capsnet', source, out, TINY, data_dir=data_dir,
                                  selected='last epoch')
    assert entry['selected'] == 'last epoch'
    assert os.path.getsize(out) < 0.6 * os.path.getsize(source)  # float16: about half
    with open(os.path.join(os.path.dirname(out), 'manifest.json')) as f:
        assert json.load(f) == {'tiny.h5': entry}
    assert sorted(os.listdir(os.path.dirname(out))) == ['manifest.json', 'tiny.h5']  # no temps
    assert entry['sha256'] == export_weights.sha256(out)
    # the same random-weights model, so the same answers in float16 and float32 (40 images)
    assert abs(entry['float16_test_accuracy'] - entry['float32_test_accuracy']) <= 1 / 40.


def test_manifest_says_how_each_file_was_selected():
    for name, entry in manifest().items():
        assert entry.get('selected') in export_weights.SELECTIONS, name


def test_export_refuses_an_unknown_selection_before_writing(tmp_path):
    out = str(tmp_path / 'tiny.h5')
    with pytest.raises(export_weights.UserError, match='--selected must be one of'):
        export_weights.export('capsnet', str(tmp_path / 'missing.h5'), out, TINY,
                              selected='best guess')
    assert os.listdir(str(tmp_path)) == []


def test_export_command_records_and_prints_the_selection(tmp_path, capsys):
    data_dir = str(tmp_path / 'mnist')
    fake_mnist(data_dir, n_train=20, n_test=10)
    C.clear_session(free_memory=False)
    model, _, _ = capsulenet.build_models('capsnet', (28, 28, 1), 10, **TINY)
    source = str(tmp_path / 'checkpoint.h5')
    h5weights.save_weights_h5(model, source)
    out = str(tmp_path / 'tiny.h5')
    options = sum((['--option', '%s=%s' % kv] for kv in TINY.items()), [])
    code = export_weights.main(['-w', source, '--out', out, '--data_dir', data_dir,
                                '--selected', 'held-out validation'] + options)
    printed = capsys.readouterr().out
    assert code == 0 and '"selected": "held-out validation"' in printed
    assert printed.rstrip().endswith('selected by held-out validation')
    with open(str(tmp_path / 'manifest.json')) as f:
        assert json.load(f)['tiny.h5']['selected'] == 'held-out validation'
