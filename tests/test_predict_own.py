"""predict.py and export_model.py on models of your own data (any size, 1 or 3 channels, any
class count, the CIFAR-10 recipe): the model.json a training run writes is what they rebuild
the model from; images are prepared as the data set's loader reads them (colour kept, fitted
keeping the aspect ratio, CIFAR-10's centre crop, no inversion but for digit models); predicted
classes and lengths are the model's own; exported files load with a plain load_model; bad
input (a corrupt image, weights of an unknown shape without model.json, a damaged record) is
one `error:` line."""
import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from helpers import assert_one_error_line, run_main, run_python
from test_export_model import LOADER
from test_own_data import write_folder

import capsulenet
import cifar10
import compat as C
import export_model
import h5weights
import modelcard
import own_data
import predict
from runfolder import RunFolder

# tiny CapsNets, as CLI flags and as the options model.json records
TINY = dict(conv1_filters=8, primary_channels=2, primary_dim=4, digit_dim=4)
TINY_FLAGS = [a for k, v in sorted(TINY.items()) for a in ('--' + k, str(v))]
CLASSES = ('cat', 'dog', 'fish')


def card(dataset, shape, n_class, names=None):
    return modelcard.Card('capsnet', dataset, shape, n_class, dict(TINY), names, 'test')


# ---------------------------------------------------------------- preparing images
def test_an_image_of_the_input_size_is_taken_as_the_loader_reads_it(tmp_path):
    """A data set's own PNGs (colour, and grey) reach the model as own_data read them."""
    for mode, shape in (('RGB', (32, 32, 3)), ('L', (20, 24, 1))):
        root = str(tmp_path / mode)
        written = write_folder(root, classes=('a', 'b'), n_train=1, n_test=2,
                               size=(shape[1], shape[0]), mode=mode)
        for path in written['test']:
            want = own_data.to_float(own_data.read_images([(path, 0)], None)[0])[0]
            got, inverted = predict.prepare(predict.read_pixels(path, shape[2] == 3),
                                            card('folder', shape, 2))
            assert not inverted and got.dtype == np.float32
            np.testing.assert_array_equal(got, want)


def test_other_sizes_are_fitted_keeping_the_aspect_ratio():
    """A 64x32 image in a 32x32 model: scaled to 32x16, centred, the sides the border's
    colour; CIFAR-10: fitted in 32x32, then the centre 24x24, as its test images."""
    tall = np.full((64, 32, 3), 0.25, 'float32')
    tall[:, :, 0] = 0.75  # a red-ish background, and a white square in the middle
    tall[24:40, 8:24] = 1.
    x, _ = predict.prepare(tall, card('folder', (32, 32, 3), 3))
    assert x.shape == (32, 32, 3)
    np.testing.assert_allclose(x[:, :8], np.broadcast_to([0.75, 0.25, 0.25], (32, 8, 3)))
    np.testing.assert_allclose(x[:, 24:], np.broadcast_to([0.75, 0.25, 0.25], (32, 8, 3)))
    white = np.argwhere(x.min(-1) > 0.9)
    assert white.min(0).tolist() == [12, 12] and white.max(0).tolist() == [19, 19]
    photo = np.random.RandomState(0).uniform(size=(64, 64, 3)).astype('float32')
    x, _ = predict.prepare(photo, card('cifar10', (24, 24, 3), 10))
    np.testing.assert_array_equal(x, predict.fitted(photo, (32, 32))[4:28, 4:28])


def test_only_digit_models_invert_unless_told():
    """Dark on light: MNIST's models see it inverted; a grey folder model as it is, unless
    --invert yes."""
    page = np.ones((30, 30), 'float32')
    page[10:20, 12:16] = 0.  # a dark stroke on white paper
    assert predict.prepare(page, card('mnist', (28, 28, 1), 10))[1]
    x, inverted = predict.prepare(page, card('folder', (30, 30, 1), 2))
    assert not inverted and np.array_equal(x[..., 0], page)
    x, inverted = predict.prepare(page, card('folder', (30, 30, 1), 2), 'yes')
    assert inverted and np.array_equal(x[..., 0], 1. - page)
    x, _ = predict.prepare(page, card('affnist', (40, 40, 1), 10))  # MNIST's look on 40x40
    assert x.shape == (40, 40, 1) and x[..., 0].max() == 1. and x[0].max() == 0.


# ---------------------------------------------------------------- runs with a record
def make_run(folder, dataset, shape, n_class, data_dir=None, seed=0):
    """A run folder as training leaves it: trained_model.h5 (random weights) and model.json
    written by modelcard.record, as capsulenet.py writes it. -> the weights' path."""
    os.makedirs(folder)
    C.clear_session(free_memory=False)
    C.set_seed(seed)
    train_model, _, _ = capsulenet.build_models('capsnet', shape, n_class, dataset, **TINY)
    run = RunFolder(folder)
    h5weights.save_weights_h5(train_model, run.trained)
    modelcard.record(run.model, 'capsnet', dataset, shape, n_class, TINY, data_dir)
    return run.trained


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """{name: (weights, data folder or None)}: a 32x32 colour folder model of 3 classes and a
    CIFAR-10 recipe model (24x24x3, leaky routing), both with their model.json."""
    root = tmp_path_factory.mktemp('runs')
    images = str(root / 'images')
    write_folder(images, classes=CLASSES, n_train=2, n_test=2)
    return {'folder': (make_run(str(root / 'folder'), 'folder', (32, 32, 3), 3, images), images),
            'cifar10': (make_run(str(root / 'cifar10'), 'cifar10', (24, 24, 3), 10), None)}


LINE = re.compile(r'^(.+?): (.+?)  \(capsule lengths: (.+?): ([\d.]+), (.+?): ([\d.]+)'
                  r'(?:; inverted)?\)$')


def printed(out):
    """[(path, class, class, its length, second class, its length)] of predict.py's lines."""
    rows = [LINE.match(line) for line in out.splitlines()]
    assert rows and all(rows), out
    return [(m.group(1), m.group(2), m.group(3), float(m.group(4)), m.group(5),
             float(m.group(6))) for m in rows]


@pytest.mark.stack
def test_predict_rebuilds_the_model_from_its_record_and_names_the_classes(runs, tmp_path,
                                                                          capsys):
    weights, images = runs['folder']
    paths = sorted(os.path.join(images, 'test', c, n) for c in CLASSES
                   for n in os.listdir(os.path.join(images, 'test', c)))
    recon = tmp_path / 'recon'
    code, out, err = run_main(capsys, '-w', weights, '--recon_dir', str(recon), *paths,
                              main=predict.main)
    assert code == 0, err
    rows = printed(out)
    assert [r[0] for r in rows] == paths
    # the model's own lengths on the images as the data set's loader reads them
    eval_model = export_model.load_card(modelcard.resolve(weights), weights)
    x = own_data.to_float(own_data.read_images([(p, 0) for p in paths], None)[0])
    lengths = export_model.lengths_of(eval_model, x)
    for (path, name, first, l1, second, l2), want in zip(rows, lengths):
        order = np.argsort(-want)
        assert name == first == CLASSES[order[0]] and second == CLASSES[order[1]]
        np.testing.assert_allclose([l1, l2], want[order[:2]], atol=6e-4)
    pair = np.asarray(Image.open(str(recon / '0_recon.png')))
    assert pair.shape[:2] == (32, 64) and pair[..., :3].std() > 0  # colour: input | recon


@pytest.mark.stack
def test_the_cifar10_recipe_model_predicts_by_name_on_any_size(runs, tmp_path, capsys):
    weights, _ = runs['cifar10']
    photo = (np.random.RandomState(1).uniform(size=(48, 80, 3)) * 255).astype('uint8')
    path = str(tmp_path / 'photo.jpg')
    Image.fromarray(photo).save(path, quality=95)
    code, out, err = run_main(capsys, '-w', weights, path, main=predict.main)
    assert code == 0, err
    (row,) = printed(out)
    eval_model = export_model.load_card(modelcard.resolve(weights), weights)
    x, _ = predict.prepare(predict.read_pixels(path, True), modelcard.resolve(weights))
    want = export_model.lengths_of(eval_model, x[None])[0]
    assert row[1] == cifar10.CLASS_NAMES[int(np.argmax(want))]


@pytest.mark.stack
def test_export_of_own_models_loads_with_plain_load_model(runs, tmp_path):
    """No flags: the record gives the shape; a fresh process that imports only capsulelayers
    loads each file with keras.models.load_model and predicts the weights' lengths."""
    files, expected = [], {}
    for name in ('folder', 'cifar10'):
        weights, _ = runs[name]
        out = str(tmp_path / (name + export_model.EXTENSION))
        code = export_model.main(['-w', weights, '--out', out])
        assert code == 0
        card = modelcard.resolve(weights)
        x, _ = export_model.check_images(card)
        np.save(str(tmp_path / (name + '.npy')), x[:4])
        expected[out] = export_model.lengths_of(export_model.load_card(card, weights), x[:4])
        files.append(out)
    script = str(tmp_path / 'load.py')
    with open(script, 'w') as f:  # one image set per file: each model its own shape
        f.write(LOADER.replace('x = np.load(sys.argv[1])',
                               'x = np.load(path.rsplit(".", 1)[0] + ".npy")'))
    done = run_python(script, 'unused', *files, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
    assert done.returncode == 0, done.stderr[-3000:]
    line = [l for l in done.stdout.splitlines() if l.startswith('LENGTHS ')][-1]
    loaded = json.loads(line[len('LENGTHS '):])
    for path in files:
        np.testing.assert_allclose(np.array(loaded[path]), expected[path], rtol=0, atol=1e-6)
    assert np.array(loaded[files[1]]).shape == (4, 10)


@pytest.mark.stack
def test_flags_override_the_record(runs, tmp_path, capsys):
    """Weights copied without model.json: MNIST's shape does not fit, one line saying so;
    the flags it was trained with rebuild it."""
    weights, _ = runs['folder']
    alone = tmp_path / 'copy'
    alone.mkdir()
    shutil.copy(weights, str(alone / 'mine.h5'))
    image = str(tmp_path / 'x.png')
    Image.fromarray(np.zeros((32, 32, 3), 'uint8')).save(image)
    code, out, err = run_main(capsys, '-w', str(alone / 'mine.h5'), image, main=predict.main)
    assert_one_error_line(code, err, 'mine.h5')
    assert 'no model.json beside it' in err and '--input_shape' in err and out == ''
    out_file = str(tmp_path / ('mine' + export_model.EXTENSION))
    code, out, err = run_main(capsys, '-w', str(alone / 'mine.h5'), '--out', out_file,
                              main=export_model.main)
    assert_one_error_line(code, err, 'no model.json beside it')
    assert not os.path.exists(out_file)
    flags = ['--dataset', 'folder', '--input_shape', '32x32x3', '--n_class', '3'] + [
        '--option=%s=%s' % kv for kv in sorted(TINY.items())]
    code, out, err = run_main(capsys, '-w', str(alone / 'mine.h5'), image, *flags,
                              main=predict.main)
    assert code == 0, err
    assert printed(out)[0][1] in ('0', '1', '2')  # no record: class numbers


@pytest.mark.stack
@pytest.mark.parametrize('case, message', [
    ('corrupt_image', 'corrupt or truncated'),
    ('damaged_record', 'cannot read'),
    ('record_field', '"input_shape" must be'),
    ('record_option', 'not an option of --model capsnet'),
    ('classifier', 'only capsule models'),
    ('two_channels', 'predict.py reads 1 (grey) or 3'),
])
def test_bad_input_is_one_line(runs, tmp_path, capsys, case, message):
    weights, _ = runs['folder']
    folder = tmp_path / 'run'
    shutil.copytree(os.path.dirname(weights), str(folder))
    record = folder / modelcard.FILE
    entry = json.loads(record.read_text())
    image = tmp_path / 'x.png'
    Image.fromarray(np.zeros((32, 32, 3), 'uint8')).save(str(image))
    if case == 'corrupt_image':
        image.write_bytes(image.read_bytes()[:50])
    elif case == 'damaged_record':
        record.write_text('{"model": "capsnet", ')
    else:
        entry.update({'record_field': {'input_shape': [32, 'x', 3]},
                      'record_option': {'options': {'colour': 1}},
                      'classifier': {'model': 'cnn'},
                      'two_channels': {'input_shape': [32, 32, 2]}}[case])
        record.write_text(json.dumps(entry))
    code, out, err = run_main(capsys, '-w', str(folder / 'trained_model.h5'), str(image),
                              main=predict.main)
    assert_one_error_line(code, err, message)
    assert out == ''


# ---------------------------------------------------------------- the whole way
def test_a_record_alone_is_no_earlier_run(tmp_path):
    """model.json is written as training starts: with validation_split.json alone, it is a
    run stopped at once, not one to keep (the run folder's other files count as before)."""
    folder = RunFolder(str(tmp_path))
    for path in (folder.model, folder.split):
        open(path, 'w').write('{}')
    assert folder.earlier_run() == []
    open(folder.trained, 'w').write('')
    assert folder.earlier_run() == ['model.json', 'trained_model.h5', 'validation_split.json']


@pytest.mark.stack
@pytest.mark.train_cli
def test_train_one_epoch_on_a_folder_then_predict_its_images(tmp_path, capsys):
    """The command lines: one tiny epoch on 3 classes of 32x32 colour, then predict.py on the
    test PNGs with nothing but -w: the classes the model's own evaluation gives."""
    images = str(tmp_path / 'images')
    write_folder(images, classes=CLASSES, n_train=3, n_test=2, seed=3)
    save = tmp_path / 'run'
    code, out, err = run_main(capsys, '--dataset', 'folder', '--data_dir', images, '--save_dir',
                              str(save), '--epochs', '1', '--batch_size', '3', '--seed', '1',
                              *TINY_FLAGS)
    assert code == 0, err[-3000:]
    record = json.loads((save / 'model.json').read_text())
    assert record == {'model': 'capsnet', 'dataset': 'folder', 'input_shape': [32, 32, 3],
                      'n_class': 3, 'options': TINY, 'class_names': list(CLASSES)}
    weights = str(save / 'trained_model.h5')
    code, out, err = run_main(capsys, '-w', weights,
                              *[os.path.join(images, 'test', c) for c in CLASSES],
                              main=predict.main)
    assert code == 0, err
    rows = printed(out)
    paths = [r[0] for r in rows]
    assert len(paths) == 6
    eval_model = export_model.load_card(modelcard.resolve(weights), weights)
    x = own_data.to_float(own_data.read_images([(p, 0) for p in paths], None)[0])
    want = export_model.lengths_of(eval_model, x).argmax(1)
    assert [r[1] for r in rows] == [CLASSES[i] for i in want]
