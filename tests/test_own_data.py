"""Your own data set: --dataset folder (DIR/train/<class>/*, DIR/test/<class>/*) and
--dataset npz (x_train, y_train, x_test, y_test), on small folders and files written here
(generated images): the readers against the arrays written, shapes taken from the data (size,
1 or 3 channels, class count) by the CapsNet, Efficient-CapsNet and CNN builders, bad input
as one line, and images too small for the architecture as one line naming the smallest size
and the flags to change."""
import os

import numpy as np
import pytest

import capsulenet
import compat as C
import own_data
from data_errors import DataError
from helpers import assert_one_error_line, run_main
from safeio import UserError


def write_folder(root, classes=('cat', 'dog', 'fish'), n_train=4, n_test=2, size=(32, 32),
                 mode='RGB', seed=0, ext='.png'):
    """root/train/<class>/<i>.png and root/test/<class>/<i>.png of generated images (PIL,
    mode RGB or L, size (W, H)). -> {split: {path: uint8 array written}}."""
    from PIL import Image
    rng = np.random.RandomState(seed)
    written = {'train': {}, 'test': {}}
    for split, n in (('train', n_train), ('test', n_test)):
        for name in classes:
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i in range(n):
                shape = (size[1], size[0]) + ((3,) if mode == 'RGB' else ())
                array = rng.randint(0, 256, shape).astype('uint8')
                path = os.path.join(root, split, name, '%d%s' % (i, ext))
                Image.fromarray(array, mode).save(path)
                written[split][path] = array
    return written


def write_npz(path, n_train=12, n_test=6, shape=(20, 16, 3), n_class=4, dtype='uint8', **over):
    rng = np.random.RandomState(1)
    arrays = {'x_train': rng.randint(0, 256, (n_train,) + shape),
              'y_train': np.arange(n_train) % n_class,
              'x_test': rng.randint(0, 256, (n_test,) + shape),
              'y_test': np.arange(n_test) % n_class}
    for key in ('x_train', 'x_test'):
        arrays[key] = (arrays[key].astype(dtype) if dtype == 'uint8'
                       else (arrays[key] / 255.).astype(dtype))
    arrays.update(over)
    np.savez(path, **arrays)
    return arrays


# ---------------------------------------------------------------- folder reader
def test_folder_reader_returns_the_images_written_with_their_classes(tmp_path):
    written = write_folder(str(tmp_path))
    (x, y), (xt, yt), classes = own_data.load_folder(str(tmp_path))
    assert classes == ['cat', 'dog', 'fish']
    assert x.shape == (12, 32, 32, 3) and x.dtype == np.float32 and xt.shape == (6, 32, 32, 3)
    # each image read is one written, in its class's folder, scaled to [0, 1]
    by_bytes = {a.tobytes(): p for p, a in written['train'].items()}
    for image, label in zip(x, y):
        path = by_bytes[np.round(image * 255).astype('uint8').tobytes()]
        assert os.path.basename(os.path.dirname(path)) == classes[label]
    assert np.bincount(y).tolist() == [4, 4, 4] and sorted(yt.tolist()) == [0, 0, 1, 1, 2, 2]
    # the fixed shuffled order: --train_samples takes images of several classes, every run
    (x4, y4), _, _ = own_data.load_folder(str(tmp_path), train_samples=4, test_samples=1)
    assert len(set(y4.tolist())) > 1 and len(x4) == 4
    np.testing.assert_array_equal(x4, x[:4])


def test_grey_folders_give_one_channel_and_any_size(tmp_path):
    written = write_folder(str(tmp_path), classes=('a', 'b'), size=(20, 12), mode='L')
    (x, y), (xt, _), _ = own_data.load_folder(str(tmp_path))
    assert x.shape == (8, 12, 20, 1) and xt.shape == (4, 12, 20, 1)
    first = written['train']
    assert any(np.array_equal(np.round(x[0, ..., 0] * 255), a) for a in first.values())


def test_a_grey_image_in_a_colour_set_is_repeated_to_rgb(tmp_path):
    write_folder(str(tmp_path), classes=('a', 'b'), n_train=2, n_test=1)
    from PIL import Image
    grey = np.arange(32 * 32, dtype='uint8').reshape(32, 32)
    Image.fromarray(grey, 'L').save(str(tmp_path / 'test' / 'a' / 'grey.png'))
    _, (xt, _), _ = own_data.load_folder(str(tmp_path))
    match = [im for im in xt if np.array_equal(np.round(im * 255)[..., 0], grey)]
    assert len(match) == 1 and np.array_equal(match[0][..., 0], match[0][..., 2])


@pytest.mark.parametrize('case, message', [
    ('one_class', 'at least 2'),
    ('no_test', 'has no test/ folder'),
    ('unknown_test_class', 'class folders that'),
    ('empty_class', 'holds no images'),
    ('other_size', 'resize them first'),
    ('corrupt', 'cannot read image'),
    ('no_dir', '--dataset folder needs --data_dir'),
])
def test_bad_folders_are_one_line(tmp_path, case, message):
    from PIL import Image
    root = str(tmp_path / 'data')
    write_folder(root, classes=('a',) if case == 'one_class' else ('a', 'b'), n_train=2,
                 n_test=1)
    if case == 'no_test':
        import shutil
        shutil.rmtree(os.path.join(root, 'test'))
    elif case == 'unknown_test_class':
        os.makedirs(os.path.join(root, 'test', 'zebra'))
    elif case == 'empty_class':
        os.makedirs(os.path.join(root, 'train', 'c'))
    elif case == 'other_size':
        image = Image.fromarray(np.zeros((30, 32, 3), 'uint8'))
        image.save(os.path.join(root, 'test', 'b', 'x.png'))
    elif case == 'corrupt':
        open(os.path.join(root, 'train', 'b', 'bad.png'), 'wb').write(b'\x89PNG garbage')
    with pytest.raises(DataError) as e:
        own_data.load_folder(None if case == 'no_dir' else root)
    assert message in str(e.value) and '\n' not in str(e.value)
    if case in ('other_size', 'corrupt'):
        assert ('x.png' if case == 'other_size' else 'bad.png') in str(e.value)


# ---------------------------------------------------------------- npz reader
@pytest.mark.parametrize('shape', [(20, 16), (20, 16, 1), (20, 16, 3)])
@pytest.mark.parametrize('dtype', ['uint8', 'float32'])
def test_npz_reader(tmp_path, shape, dtype):
    path = str(tmp_path / 'd.npz')
    arrays = write_npz(path, shape=shape, dtype=dtype)
    (x, y), (xt, yt), n_class = own_data.load_npz(path, train_samples=5)
    channels = shape[2] if len(shape) == 3 else 1
    assert x.shape == (5, 20, 16, channels) and xt.shape == (6, 20, 16, channels)
    assert x.dtype == np.float32 and n_class == 4
    want = arrays['x_train'][:5].reshape(x.shape).astype('float64')
    np.testing.assert_allclose(x, want / 255. if dtype == 'uint8' else want, rtol=1e-6)
    assert y.tolist() == [0, 1, 2, 3, 0] and yt.tolist() == arrays['y_test'].tolist()


@pytest.mark.parametrize('case, message', [
    ('missing_key', 'lacks y_test'),
    ('one_hot', 'expected integer labels [N]'),
    ('count', 'holds 11 labels for 12 images'),
    ('channels', 'expected images [N, H, W] or [N, H, W, C] with C = 1 or 3'),
    ('range', 'expected [0, 1]'),
    ('int_images', 'expected uint8 (0..255) or float'),
    ('shapes', 'both splits need one shape'),
    ('one_class', 'at least 2 classes'),
    ('negative', 'negative label'),
    ('pickle', 'cannot read'),
    ('not_npz', 'cannot read'),
])
def test_bad_npz_is_one_line(tmp_path, case, message):
    path = str(tmp_path / 'd.npz')
    rng = np.random.RandomState(0)
    over = {'one_hot': {'y_train': np.eye(4)[np.arange(12) % 4]},
            'count': {'y_train': np.arange(11) % 4},
            'channels': {'x_train': np.zeros((12, 20, 16, 2), 'uint8')},
            'range': {'x_train': rng.uniform(0, 255, (12, 20, 16, 3)).astype('float32')},
            'int_images': {'x_train': np.zeros((12, 20, 16, 3), 'int64')},
            'shapes': {'x_test': np.zeros((6, 20, 20, 3), 'uint8')},
            'one_class': {'y_train': np.zeros(12, 'int64'), 'y_test': np.zeros(6, 'int64')},
            'negative': {'y_test': -np.ones(6, 'int64')},
            'pickle': {'y_test': np.array([{'a': 1}] * 6, dtype=object)}}.get(case, {})
    if case == 'missing_key':
        arrays = write_npz(path)
        np.savez(path, **{k: v for k, v in arrays.items() if k != 'y_test'})
    elif case == 'not_npz':
        open(path, 'wb').write(b'not a zip' * 10)
    else:
        write_npz(path, **over)
    with pytest.raises(DataError) as e:
        own_data.load_npz(path)
    assert message in str(e.value) and '\n' not in str(e.value)


# ---------------------------------------------------------------- shapes from the data
@pytest.mark.stack
@pytest.mark.parametrize('model', ['capsnet', 'efficient', 'cnn'])
def test_builders_take_size_channels_and_classes_from_the_data(model):
    C.clear_session(free_memory=False)
    options = {'capsnet': dict(conv1_filters=8, primary_channels=2), 'efficient': {},
               'cnn': dict(conv1_filters=8)}[model]
    _, eval_model, _ = capsulenet.build_models(model, (30, 34, 3), 3, 'folder', **options)
    outputs = eval_model.outputs if model != 'cnn' else [eval_model.output]
    assert C.int_shape(eval_model.inputs[0])[1:] == (30, 34, 3)
    assert C.int_shape(outputs[0])[1:] == (3,)
    if model != 'cnn':  # the reconstruction has the images' shape
        assert C.int_shape(outputs[1])[1:] == (30, 34, 3)


def test_smallest_input_from_kernels_and_strides():
    assert capsulenet.smallest_input((9, 9), (1, 2)) == 17  # CapsNet: 17 -> 9 -> 1
    assert capsulenet.smallest_input((5, 3, 3, 3, 9), (1, 1, 1, 2, 1)) == 27
    assert capsulenet.smallest_input((2, 2), (2, 2)) == 4


@pytest.mark.stack
@pytest.mark.parametrize('model, side, smallest, flag', [
    ('capsnet', 16, 17, '--conv1_kernel'),
    ('efficient', 26, 27, '--model capsnet'),
    ('cnn', 3, 4, 'larger images'),
])
def test_too_small_images_are_one_user_error(model, side, smallest, flag):
    with pytest.raises(UserError) as e:
        capsulenet.build_models(model, (side, side + 5, 1), 3, 'npz')
    text = str(e.value)
    assert 'at least %dx%d' % (smallest, smallest) in text and flag in text
    C.clear_session(free_memory=False)  # one pixel more builds (CNN: tiny, to be quick)
    options = {'cnn': dict(conv1_filters=4)}.get(model, {})
    if model == 'capsnet':
        options = dict(conv1_filters=4, primary_channels=1)
    capsulenet.build_models(model, (smallest, smallest, 1), 3, 'npz', **options)


# ---------------------------------------------------------------- the command line
@pytest.mark.end_to_end
@pytest.mark.train_cli
def test_cli_trains_on_a_folder_and_an_npz(tmp_path, capsys):
    write_folder(str(tmp_path / 'imgs'), n_train=3, n_test=2, size=(24, 20))
    tiny = ['--conv1_filters', '8', '--primary_channels', '2', '--epochs', '1',
            '--batch_size', '3', '--seed', '1']
    code, out, err = run_main(capsys, '--dataset', 'folder', '--data_dir', str(tmp_path / 'imgs'),
                              '--save_dir', str(tmp_path / 'a'), *tiny)
    assert code == 0, err[-3000:]
    assert '3 classes (cat, dog, fish), 9 training and 6 test images of 20x24x3' in out
    assert 'on 6 images' in out and os.path.isfile(str(tmp_path / 'a' / 'trained_model.h5'))
    path = str(tmp_path / 'd.npz')
    write_npz(path, shape=(18, 18), n_class=5)
    code, out, err = run_main(capsys, '--dataset', 'npz', '--data_dir', path, '--model', 'cnn',
                              '--conv1_filters', '8', '--epochs', '1', '--batch_size', '4',
                              '--save_dir', str(tmp_path / 'b'))
    assert code == 0, err[-3000:]
    assert '5 classes, 12 training and 6 test images of 18x18x1' in out


@pytest.mark.end_to_end
def test_cli_too_small_and_bad_data_are_one_line(tmp_path, capsys):
    path = str(tmp_path / 'd.npz')
    write_npz(path, shape=(12, 12, 3))
    save = tmp_path / 'out'
    code, out, err = run_main(capsys, '--dataset', 'npz', '--data_dir', path,
                              '--save_dir', str(save))
    assert_one_error_line(code, err, 'images of 12x12 are too small for --model capsnet')
    assert 'at least 17x17' in err and '--conv1_kernel' in err
    assert not (save / 'log.csv').exists()
    code, out, err = run_main(capsys, '--dataset', 'folder', '--save_dir', str(save))
    assert_one_error_line(code, err, '--dataset folder needs --data_dir DIR')
