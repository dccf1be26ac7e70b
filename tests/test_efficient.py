"""Efficient-CapsNet: squash, self-attention routing vs NumPy, parameter count, recipe,
augmentation, a short run that learns, and the CLI with --model efficient."""
import os

import numpy as np
import pytest

import compat as C
import h5weights  # noqa: E402
import capsulenet
import batches as B
import training
import utils
from capsulelayers import FCCaps, efficient_squash
from helpers import accuracy_from, assert_image, run_main
from tensors import evaluate, gradient_of_sum

pytestmark = pytest.mark.stack


# ---------------------------------------------------------------- NumPy references
def np_efficient_squash(s, eps=1e-20):
    norm = np.sqrt((s ** 2).sum(-1, keepdims=True) + eps)
    return (1 - 1 / (np.exp(norm) + eps)) * s / (norm + eps)


def np_fccaps(u, W, b):
    """The formula, written with the explicit [i, i] attention matrix per parent j.

    u [batch, i, l], W [j, i, l, d], b [j, i, 1] -> v [batch, j, d]."""
    d = W.shape[-1]
    out = []
    for sample in u:
        u_hat = np.stack([np.stack([sample[i] @ W[j, i] for i in range(W.shape[1])])
                          for j in range(W.shape[0])])                 # [j, i, d]
        A = np.einsum('jid,jkd->jik', u_hat, u_hat) / np.sqrt(d)       # [j, i, i]
        logits = A.sum(-1)                                             # [j, i]
        c = np.exp(logits - logits.max(0)) / np.exp(logits - logits.max(0)).sum(0)
        s = ((c[..., None] + b) * u_hat).sum(1)                        # [j, d]
        out.append(np_efficient_squash(s))
    return np.stack(out)


# ---------------------------------------------------------------- layers
def test_efficient_squash_hand_values():
    s = np.array([[3., 4.], [0., 0.], [1e-3, 0.], [-30., 0.]], dtype='float32')
    v = evaluate(efficient_squash, s)
    np.testing.assert_allclose(v[0], (1 - np.exp(-5.)) * np.array([0.6, 0.8]), rtol=1e-5)
    assert np.all(v[1] == 0)
    np.testing.assert_allclose(v[2], [1 - np.exp(-1e-3), 0.], rtol=1e-3)
    np.testing.assert_allclose(v[3], [-1., 0.], atol=1e-6)
    np.testing.assert_allclose(v, np_efficient_squash(s.astype('float64')), atol=1e-6)
    grad = gradient_of_sum(efficient_squash, np.zeros((2, 8), dtype='float32'))
    assert np.all(np.isfinite(grad))


def test_fccaps_routing_matches_numpy_formula():
    rng = np.random.RandomState(0)
    u = rng.normal(size=(3, 5, 4)).astype('float32') * 0.5
    layer = FCCaps(num_capsule=3, dim_capsule=6)
    evaluate(layer, u)  # builds it
    W = rng.normal(size=(3, 5, 4, 6)).astype('float32') * 0.5
    b = rng.normal(size=(3, 5, 1)).astype('float32') * 0.3
    layer.set_weights([W, b])
    v = evaluate(layer, u)
    assert v.shape == (3, 3, 6)
    np.testing.assert_allclose(v, np_fccaps(u.astype('float64'), W, b), rtol=1e-4, atol=1e-5)


def test_fccaps_weights_and_config():
    layer = FCCaps(10, 16)
    evaluate(layer, np.zeros((1, 16, 8), dtype='float32'))
    shapes = sorted(tuple(w.shape) for w in layer.get_weights())
    assert shapes == [(10, 16, 1), (10, 16, 8, 16)]
    assert np.all(layer.get_weights()[1] == 0)  # the log-prior starts at zero
    config = layer.get_config()
    assert (config['num_capsule'], config['dim_capsule']) == (10, 16)


# ---------------------------------------------------------------- model
@pytest.fixture(scope='module')
def mnist_models():
    C.clear_session(free_memory=False)
    return capsulenet.EfficientCapsNet((28, 28, 1), 10)


def test_parameter_count_is_the_papers(mnist_models):
    train_model = mnist_models[0]
    assert capsulenet.trainable_count(train_model) == 161824
    assert train_model.get_layer('decoder').count_params() == 1411344
    non_trainable = sum(int(np.prod(C.int_shape(w))) for w in train_model.non_trainable_weights)
    assert non_trainable == 576  # BatchNorm moving statistics
    assert C.int_shape(train_model.get_layer('primarycap_squash').output)[1:] == (16, 8)
    assert C.int_shape(train_model.get_layer('digitcaps').output)[1:] == (10, 16)


def test_models_share_the_decoder(mnist_models):
    train_model, eval_model, manipulate_model = mnist_models
    rng = np.random.RandomState(0)
    x = rng.rand(4, 28, 28, 1).astype('float32')
    lengths, recon = eval_model.predict(x, verbose=0)
    assert lengths.shape == (4, 10) and recon.shape == (4, 28, 28, 1)
    assert np.all((lengths >= 0) & (lengths < 1))
    y = np.eye(10, dtype='float32')[lengths.argmax(1)]
    again = manipulate_model.predict([x, y, np.zeros((4, 10, 16), 'float32')], verbose=0)
    np.testing.assert_allclose(recon, again, atol=1e-5)


def test_recipe_defaults_per_model_and_explicit_flags_win():
    parse = capsulenet.build_parser().parse_args
    a = parse([])
    assert (a.epochs, a.batch_size, a.lr, a.lr_decay, a.lr_min, a.augment) == \
        (50, 100, 0.001, 0.9, 0., 'shift')
    e = parse(['--model', 'efficient'])
    assert (e.epochs, e.batch_size, e.lr, e.lr_decay, e.lr_min, e.augment) == \
        (150, 16, 5e-4, 0.97, 5e-5, 'efficient')
    f = parse(['--model', 'efficient', '--batch_size', '32', '--lr', '0.01'])
    assert (f.batch_size, f.lr, f.epochs) == (32, 0.01, 150)
    # x0.97 per epoch down to the floor: 5e-4 * 0.97^e < 5e-5 from epoch 76
    assert training.scheduled_lr(0, e.lr, e.lr_decay, e.lr_min) == 5e-4
    assert abs(training.scheduled_lr(10, e.lr, e.lr_decay, e.lr_min) - 5e-4 * 0.97 ** 10) < 1e-12
    assert training.scheduled_lr(100, e.lr, e.lr_decay, e.lr_min) == 5e-5
    assert abs(training.scheduled_lr(100, a.lr, a.lr_decay, a.lr_min) - 0.001 * 0.9 ** 100) < 1e-15


# ---------------------------------------------------------------- augmentation
def test_efficient_augment_shapes_range_and_seed():
    x = utils.load_mnist(train_samples=0, test_samples=16)[1][0]
    out = utils.efficient_augment(x, np.random.RandomState(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert not np.allclose(out, x)
    np.testing.assert_array_equal(out, utils.efficient_augment(x, np.random.RandomState(0)))
    # the digit stays mostly in the frame: at most rotation blur + one 4x4 patch lost
    assert np.all(out.sum((1, 2, 3)) > 0.6 * x.sum((1, 2, 3)))


def test_augment_pieces():
    image = np.zeros((6, 6, 1), 'float32')
    image[2:4, 1:3] = 1
    assert utils._free_margins(image) == (2, 2, 1, 3)
    moved = utils._shift_zero_fill(image, -2, 3)
    assert moved[0:2, 4:6].sum() == 4 and moved.sum() == 4
    full = np.ones((4, 10, 1), 'float32')
    squeezed = utils._squeeze_width(full, 4, 3)  # width 6 (Lanczos keeps a constant), 3 px in
    assert squeezed.shape == full.shape
    assert np.all(squeezed[:, :3] == 0) and np.all(squeezed[:, -1:] == 0)
    np.testing.assert_allclose(squeezed[:, 3:9], 1, atol=1e-5)
    # OpenCV's convention: counter-clockwise about the pixel given; 90 degrees takes the
    # pixel 2 right of (4, 4) to 2 above it
    dot = np.zeros((8, 8, 1), 'float32')
    dot[4, 6] = 1
    turned = utils._rotate_about(dot, 90, 4., 4.)
    assert abs(turned[2, 4, 0] - 1) < 1e-5 and abs(turned.sum() - 1) < 1e-5


def test_efficient_augment_moves_digits_as_the_reference_does():
    """The reference's shifts are mostly 0-2 px (a half-normal share of the free margin), its
    squeeze mostly 1-3 px: digits' centres move about 1.2 px down/up and 1.6 px sideways on
    average (measured: 1.21 / 1.62 on these 400; a uniform shift over the margins gave
    2.46 / 2.81)."""
    x = utils.load_mnist(train_samples=400, test_samples=0)[0][0]
    out = utils.efficient_augment(x, np.random.RandomState(0))

    def centre(a):
        mass, r = a[..., 0], np.arange(a.shape[1])
        return (mass.sum(2) * r).sum(1) / mass.sum((1, 2)), (mass.sum(1) * r).sum(1) / mass.sum((1, 2))
    (y0, x0), (y1, x1) = centre(x), centre(out)
    assert 0.8 < np.abs(y1 - y0).mean() < 1.6 and 1.1 < np.abs(x1 - x0).mean() < 2.1


def test_batches_use_the_augment_function():
    x = np.ones((5, 4, 4, 1), 'float32')
    y = np.eye(10, dtype='float32')[:5]
    batches = B.ShiftedBatches(x, y, 2, 0, seed=0,
                                        augment=lambda images, rng: images * 0 + 0.5)
    (bx, by), (ty, tx) = batches[0]
    assert np.all(np.asarray(bx) == 0.5) and np.all(np.asarray(tx) == 0.5)
    assert len(batches) == 3


# ---------------------------------------------------------------- learning
def test_short_training_run_learns():
    """300 MNIST images, 3 epochs of batch 16 (57 steps). Measured (TF, seed 1): 0.86 on
    300 test images; chance is 0.10. BatchNorm momentum 0.9 so the moving statistics
    settle within so few steps (the model default is Keras's 0.99)."""
    (x_train, y_train), (x_test, y_test) = utils.load_mnist(train_samples=300, test_samples=300)
    C.clear_session(free_memory=False)
    C.set_seed(1)
    train_model, eval_model, _ = capsulenet.EfficientCapsNet((28, 28, 1), 10, bn_momentum=0.9)
    capsulenet.compile_model(train_model, 2e-3, 0.392)
    batches = B.ShiftedBatches(x_train, y_train, 16, 0, seed=1)
    C.fit(train_model, batches, epochs=3, verbose=0)
    lengths, _ = eval_model.predict(x_test, verbose=0)
    accuracy = np.mean(lengths.argmax(1) == y_test.argmax(1))
    assert accuracy > 0.5, accuracy


# ---------------------------------------------------------------- CLI
@pytest.mark.train_cli
def test_cli_trains_and_reloads_efficient(tmp_path, capsys):
    save_dir = str(tmp_path / 'train')
    small = ['--model', 'efficient', '--train_samples', '200', '--test_samples', '100',
             '--seed', '1']
    code, out, err = run_main(capsys, '--epochs', '1', '--save_dir', save_dir, *small)
    assert code == 0, err[-3000:]
    for name in ['log.csv', 'trained_model.h5', 'weights-01.h5']:
        assert os.path.getsize(os.path.join(save_dir, name)) > 0
    import pandas as pd
    log = pd.read_csv(os.path.join(save_dir, 'log.csv'))
    assert list(log['epoch']) == [0]
    assert abs(log['lr'].iloc[0] - 5e-4) < 1e-9  # the efficient recipe's learning rate
    assert 'val_capsnet_accuracy' in log.columns
    test_dir = str(tmp_path / 'test')
    code, out2, err = run_main(capsys, '-t', '-w', os.path.join(save_dir, 'trained_model.h5'),
                               '--save_dir', test_dir, '--digit', '3', *small)
    assert code == 0, err[-3000:]
    assert abs(accuracy_from(out2) - accuracy_from(out)) < 1e-6
    assert_image(os.path.join(test_dir, 'real_and_recon.png'), min_std=0.01)
    import matplotlib.image
    grid = matplotlib.image.imread(os.path.join(test_dir, 'manipulate-3.png'))
    assert grid.shape[:2] == (16 * 28, 11 * 28)


@pytest.mark.train_cli
def test_cli_capsnet_weights_into_efficient_is_one_line(tmp_path, capsys):
    weights = str(tmp_path / 'w.h5')
    C.clear_session(free_memory=False)
    model = capsulenet.CapsNet((28, 28, 1), 10, 1, conv1_filters=8, primary_channels=2)[0]
    h5weights.save_weights_h5(model, weights)
    code, out, err = run_main(capsys, '--model', 'efficient', '-t', '-w', weights,
                              '--test_samples', '10', '--save_dir', str(tmp_path))
    assert code == 2
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert lines[-1].startswith('error:') and 'conv1' in lines[-1]
    assert 'Traceback' not in err
