"""predict.py: MNIST test digits saved as images (both polarities, another size, colour, a
transparent canvas) come back with their labels from the shipped weights; the MNIST look
(to_mnist) keeps MNIST digits as they are; bad files and paths are one `error:` line."""
import os
import re

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from helpers import assert_image, assert_one_error_line, run_main

import predict
import utils

pytestmark = pytest.mark.stack

WEIGHTS = os.path.join(ROOT, 'pretrained', 'capsnet_r3.h5')
N = 5  # the first test digits: 7 2 1 0 4


def mnist_digits(n=N):
    """(uint8 images [n, 28, 28], light digits on black; labels [n]) of the MNIST test set."""
    (_, _), (x, y) = utils.load_mnist(train_samples=0, test_samples=n)
    return (x[..., 0] * 255).round().astype('uint8'), y.argmax(1)


def write_variants(folder, images, labels):
    """Each digit as a user may have it: MNIST's own PNG, dark on light, 56x56 colour JPEG of
    dark on light, black ink on a transparent canvas. -> {path: label}."""
    expected = {}
    for i, (a, label) in enumerate(zip(images, labels)):
        name = os.path.join(folder, '%d_label%d_' % (i, label))
        Image.fromarray(a).save(name + 'mnist.png')
        Image.fromarray(255 - a).save(name + 'dark_on_light.png')
        big = Image.fromarray(255 - a).resize((56, 56), Image.BILINEAR).convert('RGB')
        big.save(name + 'rgb56.jpg', quality=90)
        ink = np.zeros(a.shape + (4,), 'uint8')
        ink[..., 3] = a  # black ink, opaque where the digit is
        Image.fromarray(ink).save(name + 'transparent.png')
        for kind in ('mnist.png', 'dark_on_light.png', 'rgb56.jpg', 'transparent.png'):
            expected[name + kind] = int(label)
    return expected


def classes_printed(out):
    """{path: predicted class} from predict.py's lines."""
    found = {}
    for line in out.splitlines():
        match = re.match(r'^(.*): (\d+)  \(capsule lengths: (\d+): ([\d.]+), (\d+): ([\d.]+)',
                         line)
        if match:
            assert match.group(2) == match.group(3)
            assert float(match.group(4)) >= float(match.group(6))  # longest first
            found[match.group(1)] = int(match.group(2))
    return found


def test_digits_come_back_with_their_labels_in_every_form(tmp_path, capsys):
    images, labels = mnist_digits()
    folder = tmp_path / 'mine'
    folder.mkdir()
    (folder / 'notes.txt').write_text('not an image: a folder\'s other files are left out')
    expected = write_variants(str(folder), images, labels)
    recon = tmp_path / 'recon'
    code, out, err = run_main(capsys, str(folder), '-w', WEIGHTS, '--recon_dir', str(recon),
                              main=predict.main)
    assert code == 0, err
    assert classes_printed(out) == expected
    inverted = [l for l in out.splitlines() if l.endswith('; inverted)')]
    assert len(inverted) == 3 * N  # all but MNIST's own polarity
    assert sorted(os.listdir(str(recon))) == sorted(
        os.path.basename(p)[:-len(os.path.splitext(p)[1])] + '_recon.png' for p in expected)
    assert_image(str(recon / ('0_label%d_rgb56_recon.png' % labels[0])))


def test_invert_flag_forces_polarity(tmp_path, capsys):
    """--invert no on a dark-on-light digit: the model sees a light image, not the digit."""
    images, labels = mnist_digits(1)
    path = str(tmp_path / 'dark.png')
    Image.fromarray(255 - images[0]).save(path)
    code, out, _ = run_main(capsys, path, '--invert', 'no', '-w', WEIGHTS, main=predict.main)
    assert code == 0 and 'inverted' not in out
    grey = predict.read_grey(path)
    assert not predict.to_mnist(grey, 'no')[1] and predict.to_mnist(grey, 'auto')[1]
    assert predict.to_mnist(grey, 'yes')[1]


def test_mnist_digits_keep_their_look():
    """MNIST's own normalisation: most test digits pass to_mnist pixel for pixel (84 of the
    first 100 when written); inverted, a digit gives the same image; blank images stay black."""
    images, _ = mnist_digits(100)
    x = images.astype('float32') / 255.
    same = sum(np.array_equal(predict.to_mnist(a)[0], a) for a in x)
    assert same >= 75, same
    for a in x[:10]:
        inv, flipped = predict.to_mnist(1. - a)
        assert flipped and np.abs(inv - predict.to_mnist(a)[0]).max() < 1e-5
    out = predict.to_mnist(np.zeros((40, 90), 'float32'))[0]
    assert out.shape == (28, 28) and not out.any()  # blank: black, no division by 0


def test_any_size_and_aspect_is_fitted_in_the_box():
    wide = np.zeros((300, 500), 'float32')
    wide[100:140, 50:450] = 1.  # a 40x400 bar: scaled to 2x20, centred
    out = predict.to_mnist(wide)[0]
    rows, cols = np.nonzero(out > 0.5)
    assert cols.max() - cols.min() + 1 == predict.BOX
    assert abs((rows.min() + rows.max()) / 2. - 14) <= 1
    assert abs((cols.min() + cols.max()) / 2. - 14) <= 1


@pytest.mark.parametrize('name, content, message', [
    ('broken.png', None, 'corrupt or truncated'),
    ('notes.txt', b'hello', 'not a PNG or JPEG'),
    ('picture.gif', None, 'a GIF image'),
])
def test_bad_file_is_one_error_line_naming_it(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    if name == 'broken.png':
        Image.fromarray(mnist_digits(1)[0][0]).save(str(path))
        content = path.read_bytes()[:60]  # the header and part of the image data
    if name == 'picture.gif':
        Image.fromarray(mnist_digits(1)[0][0]).save(str(path))
    else:
        path.write_bytes(content)
    good = tmp_path / 'good.png'
    Image.fromarray(mnist_digits(1)[0][0]).save(str(good))
    code, out, err = run_main(capsys, str(good), str(path), main=predict.main)
    assert_one_error_line(code, err, str(path))
    assert message in err and out == ''  # every file is checked before anything is predicted


def test_missing_path_bad_weights_and_empty_folder_are_one_error_line(tmp_path, capsys):
    good = tmp_path / 'good.png'
    Image.fromarray(mnist_digits(1)[0][0]).save(str(good))
    missing = str(tmp_path / 'nope.png')
    assert_one_error_line(*run_main(capsys, str(good), missing, main=predict.main)[::2], missing)
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert_one_error_line(*run_main(capsys, str(empty), main=predict.main)[::2], str(empty))
    bad = tmp_path / 'weights.h5'
    bad.write_bytes(b'not hdf5')
    code, _, err = run_main(capsys, str(good), '-w', str(bad), main=predict.main)
    assert_one_error_line(code, err, str(bad))
