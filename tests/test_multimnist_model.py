"""MultiMNIST through the models and the CLI: parameter counts, the two-digit metric and loss
of the compiled model against multimnist.py's NumPy references, the per-digit masks, the
training batches, and `--dataset multimnist` trained and tested through the command line."""
import os

import numpy as np
import pytest

import capsulenet
import compat as C
import multimnist as mm
import batches as B
import utils
from helpers import TINY, TINY_FLAGS, accuracy_from, run_main
from tensors import evaluate

pytestmark = pytest.mark.stack

N_DIGITS = 40


@pytest.fixture(scope='module')
def digits():
    """The first 40 real MNIST training digits [40, 28, 28, 1] and their one-hot labels."""
    return utils.load_mnist(train_samples=N_DIGITS, test_samples=0)[0]


def evaluate_dict(model, inputs, targets):
    """{'loss': .., 'capsnet_loss': .., ...} of model.evaluate on one batch, on every Keras."""
    if C.KERAS3:
        return model.evaluate(inputs, targets, batch_size=len(inputs[0]), verbose=0,
                              return_dict=True)
    values = model.evaluate(inputs, targets, batch_size=len(inputs[0]), verbose=0)
    return dict(zip(model.metrics_names, values))


# ---------------------------------------------------------------- models
def test_paper_capsnet_on_36x36_has_11361808_parameters():
    C.clear_session(free_memory=False)
    train_model, eval_model, _ = capsulenet.build_models('capsnet', (36, 36, 1), 10, 'multimnist')
    assert train_model.count_params() == 11361808  # the paper's 11.36M, decoder included
    assert len(train_model.inputs) == 3 and len(train_model.outputs) == 3
    assert [C.int_shape(o)[1:] for o in eval_model.outputs] == [(10,), (36, 36, 1), (36, 36, 1)]


def test_efficient_multimnist_network():
    """EscVM's MultiMNIST graph: 36 -> 32 -> 30 -> 14 -> 6, primary 5x5 stride 2 -> 1x1x128."""
    C.clear_session(free_memory=False)
    train_model, _, _ = capsulenet.build_models('efficient', (36, 36, 1), 10, 'multimnist')
    assert capsulenet.trainable_count(train_model) == 154656
    assert C.int_shape(train_model.get_layer('primarycap_squash').output)[1:] == (16, 8)


def test_two_digit_metric_matches_numpy_reference():
    rng = np.random.RandomState(0)
    two_hot = np.zeros((300, 10), 'float32')
    for row in two_hot:
        row[rng.choice(10, 2, replace=False)] = 1
    lengths = rng.uniform(0, 1, (300, 10)).astype('float32')
    lengths[:150] = np.clip(lengths[:150] + 0.6 * two_hot[:150], 0, 1)  # many right
    got = evaluate(capsulenet.two_digit_accuracy, two_hot, lengths)
    np.testing.assert_array_equal(got, mm.two_digit_correct(two_hot, lengths))
    assert 0.2 < got.mean() < 0.9
    assert capsulenet.accuracy_metric(2).__name__ == 'accuracy'  # the log's accuracy column


def tiny_models(model='capsnet'):
    C.clear_session(free_memory=False)
    C.set_seed(3)
    options = dict(TINY) if model == 'capsnet' else {}
    return capsulenet.build_models(model, (36, 36, 1), 10, 'multimnist', **options)


@pytest.mark.parametrize('model', ['capsnet', 'efficient'])
def test_model_loss_and_metric_equal_numpy_references(digits, model):
    """The compiled model's loss = mean margin loss on the two-hot labels + 0.392/2 x each
    digit's reconstruction MSE against its own shifted digit; its accuracy = the two-digit
    metric; reconstruction k is the decoder masked by digit k's label."""
    x, y = digits
    train_model, _, manipulate_model = tiny_models(model)
    capsulenet.compile_model(train_model, 1e-3, 0.392, capsulenet.MODELS[model], digits=2)
    (images, y_1, y_2), (two_hot, first, second) = B.OverlayBatches(x, y, 16, seed=5)[0]
    logs = evaluate_dict(train_model, [images, y_1, y_2], [two_hot, first, second])
    lengths, recon_1, recon_2 = train_model.predict([images, y_1, y_2], verbose=0)
    margin = mm.np_margin_loss(two_hot, lengths).mean()
    mse_1, mse_2 = np.mean((recon_1 - first) ** 2), np.mean((recon_2 - second) ** 2)
    np.testing.assert_allclose(logs['capsnet_loss'], margin, rtol=1e-4)
    np.testing.assert_allclose(logs['decoder_loss'], mse_1, rtol=1e-4)
    np.testing.assert_allclose(logs['decoder_2_loss'], mse_2, rtol=1e-4)
    np.testing.assert_allclose(logs['loss'], margin + 0.196 * (mse_1 + mse_2), rtol=1e-4)
    assert logs['capsnet_accuracy'] == pytest.approx(mm.two_digit_accuracy(two_hot, lengths))
    zero = np.zeros((len(images), 10, 16), 'float32')
    for labels, recon in ((y_1, recon_1), (y_2, recon_2)):
        np.testing.assert_allclose(manipulate_model.predict([images, labels, zero], verbose=0),
                                   recon, atol=1e-5)


def test_eval_model_reconstructs_longest_and_second_longest(digits):
    x, y = digits
    _, eval_model, manipulate_model = tiny_models()
    images = B.OverlayBatches(x, y, 8, seed=1)[0][0][0]
    lengths, recon_a, recon_b = eval_model.predict(images, verbose=0)
    order = np.argsort(-lengths, axis=1)
    zero = np.zeros((len(images), 10, 16), 'float32')
    for rank, recon in ((0, recon_a), (1, recon_b)):
        labels = np.eye(10, dtype='float32')[order[:, rank]]
        np.testing.assert_allclose(manipulate_model.predict([images, labels, zero], verbose=0),
                                   recon, atol=1e-5)


def test_two_colour_tiles():
    rng = np.random.RandomState(0)
    images, first, second = (rng.uniform(0, 1, (3, 36, 36, 1)) for _ in range(3))
    tiles = utils.two_colour_tiles(images, first, second, dim=0.3)
    assert tiles.shape == (6, 36, 36, 3)
    np.testing.assert_array_equal(tiles[0::2], np.repeat(images, 3, -1))  # input, grey
    np.testing.assert_allclose(tiles[1::2, ..., 0], np.maximum(0.3 * images, first)[..., 0])
    np.testing.assert_allclose(tiles[1::2, ..., 1], np.maximum(0.3 * images, second)[..., 0])
    np.testing.assert_allclose(tiles[1::2, ..., 2], 0.3 * images[..., 0])
    assert utils.combine_images(tiles, width=2).shape == (3 * 36, 2 * 36, 3)


# ---------------------------------------------------------------- batches
def test_overlay_batches_are_multimnist_overlay_batch(digits):
    x, y = digits
    batches = B.OverlayBatches(x, y, 16, seed=7)
    batches.set_epoch(2)
    (images, y_1, y_2), (two_hot, first, second) = batches[1]
    order = mm.epoch_order(len(x), 7, 2)
    expected = mm.overlay_batch(x, y, order[16:32], 7, 2, 1, with_classes=True)
    for got, want in zip((images, two_hot, first, second), expected[:4]):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(y_1.argmax(1), expected[4][:, 0])
    np.testing.assert_array_equal(y_2.argmax(1), expected[4][:, 1])
    np.testing.assert_array_equal(y_1 + y_2, two_hot)
    cnn_x, cnn_y = B.ClassifierBatches(batches)[1]
    np.testing.assert_array_equal(cnn_x, images)
    np.testing.assert_array_equal(cnn_y, two_hot)
    assert len(batches) == 3


# ---------------------------------------------------------------- CLI
SMALL = ['--dataset', 'multimnist', '--train_samples', '64', '--test_samples', '20',
         '--multimnist_pairs', '2', '--epochs', '1', '--batch_size', '32', '--seed', '1']
MODEL_FLAGS = {'capsnet': TINY_FLAGS, 'efficient': [], 'cnn': ['--conv1_filters', '8']}


# capsnet on every stack; the other two where the CLI training runs are (marker train_cli)
@pytest.mark.parametrize('model', ['capsnet', pytest.param('efficient', marks=pytest.mark.train_cli),
                                   pytest.param('cnn', marks=pytest.mark.train_cli)])
def test_cli_trains_and_tests_multimnist(tmp_path, capsys, model):
    save = str(tmp_path / 'train')
    common = ['--model', model] + SMALL + MODEL_FLAGS[model]
    code, out, err = run_main(capsys, '--save_dir', save, *common)
    assert code == 0, err[-3000:]
    import pandas as pd
    log = pd.read_csv(os.path.join(save, 'log.csv'))
    column = 'val_accuracy' if model == 'cnn' else 'val_capsnet_accuracy'
    # the logged accuracy is the two-digit metric on the same 40 test pairs the CLI tests
    assert abs(log[column].iloc[-1] - accuracy_from(out)) < 1e-6
    assert 'on 40 images' in out
    assert 'CapsNet 5.2%, CNN baseline 8.1%' in out  # the paper's figures beside ours
    if model == 'cnn':
        return
    assert {'decoder_loss', 'decoder_2_loss', 'val_decoder_2_loss'} <= set(log.columns)
    import matplotlib.image
    figure = matplotlib.image.imread(os.path.join(save, 'multimnist_recon.png'))
    assert figure.shape[:2] == (4 * 36, 10 * 36)  # 20 pairs of tiles, 10 tiles a row
    assert figure.ndim == 3 and figure.shape[2] in (3, 4)  # RGB(A)
    code, out2, err = run_main(capsys, '-t', '-w', os.path.join(save, 'trained_model.h5'),
                               '--save_dir', str(tmp_path / 'test'), '--digit', '3', *common)
    assert code == 0, err[-3000:]
    assert abs(accuracy_from(out2) - accuracy_from(out)) < 1e-6
    assert os.path.isfile(str(tmp_path / 'test' / 'manipulate-3.png'))


def test_cli_multimnist_flag_only_with_its_dataset(capsys):
    code, out, err = run_main(capsys, '--multimnist_pairs', '3', '--epochs', '1')
    assert code == 2 and '--multimnist_pairs does not apply' in err
