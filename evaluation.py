"""Testing a trained model and writing its figures and reports: predictions and accuracy,
real_and_recon.png / multimnist_recon.png, manipulate-<digit>.png and the affNIST report
(affnist_results.json). The models come built and loaded; their kind ('capsule' or
'classifier', capsulenet.MODELS) is passed in.
"""
import json
import os

import numpy as np

import affnist_loader
import compat as C
import multimnist
import paper
import utils
from safeio import UserError, atomic_write


def predict(eval_model, kind, x, batch_size, quiet=False):
    """(class scores [N, n_class], reconstructions: a list of [N, H, W, C], one per digit,
    or None for a classifier). quiet: no progress bar (else the Keras version's default)."""
    outputs = eval_model.predict(x, batch_size=batch_size, **({'verbose': 0} if quiet else {}))
    return (outputs, None) if kind == 'classifier' else (outputs[0], list(outputs[1:]))


def accuracy_of(scores, y):
    """Fraction of rows whose highest score is the one-hot y's class; with two-hot y
    (MultiMNIST), whose two highest scores are its two classes."""
    if y.sum(axis=1).max() > 1:
        return multimnist.two_digit_accuracy(y, scores)
    return float(np.mean(np.argmax(scores, 1) == np.argmax(y, 1)))


def test(eval_model, kind, x_test, y_test, batch_size, save_dir):
    """Prints test accuracy / error and, for models with a decoder, writes real_and_recon.png
    (MultiMNIST: multimnist_recon.png). Returns the accuracy."""
    print('Testing on %d test images:' % len(x_test))  # names the progress bar below
    y_pred, recons = predict(eval_model, kind, x_test, batch_size)
    acc = accuracy_of(y_pred, y_test)
    print('Test accuracy: %.4f  (error %.2f%%) on %d images' % (acc, 100 * (1 - acc), len(x_test)))
    if recons is None:  # the CNN: no reconstructions to show
        return acc
    if len(recons) == 2:
        save_multimnist_recon(x_test, recons, save_dir)
        return acc
    n = min(50, len(x_test))
    shown = [utils.for_display(x_test[:n]), utils.for_display(recons[0][:n])]
    grid = utils.combine_images(np.concatenate(shown), width=10)
    path = os.path.join(save_dir, 'real_and_recon.png')
    utils.save_image(grid, path)
    print('Reconstructions (real above, reconstructed below) saved to %s' % path)
    return acc


def save_multimnist_recon(x, recons, save_dir, n=20):
    """multimnist_recon.png (paper Fig. 5 style): each of the first n test images in grey, and
    beside it the reconstructions from its longest (red) and second longest (green) capsules
    over a dim copy of it; x, recons[k]: [N, 36, 36, 1]."""
    n = min(n, len(x))
    tiles = utils.two_colour_tiles(x[:n], recons[0][:n], recons[1][:n])
    path = os.path.join(save_dir, 'multimnist_recon.png')
    utils.save_image(utils.combine_images(tiles, width=10), path)
    print('MultiMNIST reconstructions (input; longest capsule red, second green) saved to %s'
          % path)


def manipulate_latent(model, x_test, y_test, digit, seed, save_dir):
    """Writes manipulate-<digit>.png: one row per capsule dimension, columns adding
    -0.25 .. 0.25 (step 0.05) to that dimension of the digit's capsule (a test image of
    `digit` picked with `seed`)."""
    candidates = np.where(y_test[:, digit] == 1)[0]  # MultiMNIST: one of its two digits
    if len(candidates) == 0:
        raise UserError('no test image of digit %d in the test set used' % digit)
    index = candidates[np.random.RandomState(seed).randint(len(candidates))]
    x, y = x_test[index:index + 1], np.eye(y_test.shape[1], dtype='float32')[[digit]]
    n_class, dim = C.int_shape(model.inputs[2])[1:]
    steps = np.linspace(-0.25, 0.25, 11)
    noise = np.zeros((dim * len(steps), n_class, dim), dtype='float32')
    for d in range(dim):
        noise[d * len(steps):(d + 1) * len(steps), :, d] = steps[:, None]
    n = len(noise)
    print('Drawing digit %d with each of its %d capsule dimensions changed:' % (digit, dim))
    recon = model.predict([np.repeat(x, n, 0), np.repeat(y, n, 0), noise], batch_size=len(steps))
    path = os.path.join(save_dir, 'manipulate-%d.png' % digit)
    utils.save_image(utils.combine_images(recon, height=dim), path)
    print('Manipulated result saved to %s' % path)


def affnist_report(eval_model, model, kind, expanded_acc, expanded_images, affnist_set,
                   batch_size, save_dir):
    """Tests on affnist_set = (x, y, description) (real, or 'affNIST-style (generated)'),
    prints it beside the expanded-MNIST accuracy and writes <save_dir>/affnist_results.json.
    model: the --model name; kind: its MODELS kind."""
    x, y, description = affnist_set
    print('Testing on %d images of %s:' % (len(x), description))
    acc = accuracy_of(predict(eval_model, kind, x, batch_size)[0], y)
    results = {'model': model, 'expanded_mnist_accuracy': expanded_acc,
               'expanded_mnist_images': expanded_images,
               'affnist_accuracy': acc, 'affnist_images': len(x), 'affnist_set': description,
               'affnist_generated': description == affnist_loader.GENERATED_LABEL,
               'paper': paper.AFFNIST}
    path = os.path.join(save_dir, 'affnist_results.json')
    with atomic_write(path) as tmp:
        with open(tmp, 'w') as f:
            json.dump(results, f, indent=2)
    figures = paper.AFFNIST.get(model, {})
    print('%-8s expanded MNIST: %.4f   %s: %.4f   (paper %s: %.2f%% / %.0f%%)'
          % (model, expanded_acc, description, acc, model,
             100 * figures.get('expanded_mnist', float('nan')),
             100 * figures.get('affnist', float('nan'))))
    print('Results saved to %s' % path)
