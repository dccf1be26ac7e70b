"""Testing a trained model and writing its figures and reports: predictions and accuracy (of
one model, or an ensemble's mean class scores), real_and_recon.png / multimnist_recon.png,
manipulate-<digit>.png, the affNIST report (affnist_results.json) and, after a run validated
on held-out images, test_results.json. The models come built and loaded; their kind
('capsule' or 'classifier', capsulenet.MODELS) is passed in.
"""
import csv
import json
import math
import os

import numpy as np

import affnist_loader
import compat as C
import multimnist
import paper
import utils
from h5weights import load_weights_h5
from safeio import UserError, atomic_write


def predict(eval_model, kind, x, batch_size, quiet=False):
    """(class scores [N, n_class], reconstructions: a list of [N, H, W, C], one per digit,
    or None for a classifier). quiet: no progress bar (else the Keras version's default)."""
    outputs = eval_model.predict(x, batch_size=batch_size, **({'verbose': 0} if quiet else {}))
    return (outputs, None) if kind == 'classifier' else (outputs[0], list(outputs[1:]))


def ensemble_predict(eval_model, kind, x, batch_size, load, weights):
    """An ensemble's predictions: (the mean over the weights files of eval_model's class
    scores [N, n_class] (capsule lengths, or probabilities), the first file's reconstructions
    (None for a classifier), each file's scores [N, n_class]). load(path) loads a weights file
    into eval_model; it is left holding the last one's weights."""
    each, recons = [], None
    for i, path in enumerate(weights):
        load(path)
        scores, member_recons = predict(eval_model, kind, x, batch_size, quiet=True)
        each.append(np.asarray(scores, dtype='float64'))
        recons = member_recons if i == 0 else recons
    return np.mean(each, axis=0), recons, each


def scores_of(eval_model, kind, x, y, batch_size, members=None):
    """(class scores [N, n_class], reconstructions or None) of eval_model, or with members
    = (load, weights files) of their ensemble (ensemble_predict), printing each member's
    accuracy on (x, y) before."""
    if not members:
        return predict(eval_model, kind, x, batch_size)
    scores, recons, each = ensemble_predict(eval_model, kind, x, batch_size, *members)
    for path, member in zip(members[1], each):
        print('  member %s: accuracy %.4f' % (path, accuracy_of(member, y)))
    print('Ensemble of %d models: the mean of their class scores' % len(each))
    return scores, recons


def accuracy_of(scores, y):
    """Fraction of rows whose highest score is the one-hot y's class; with two-hot y
    (MultiMNIST), whose two highest scores are its two classes."""
    if y.sum(axis=1).max() > 1:
        return multimnist.two_digit_accuracy(y, scores)
    return float(np.mean(np.argmax(scores, 1) == np.argmax(y, 1)))


def test(eval_model, kind, x_test, y_test, batch_size, save_dir, members=None):
    """Prints test accuracy / error and, for models with a decoder, writes real_and_recon.png
    (MultiMNIST: multimnist_recon.png). members: (load, weights files) to test their
    ensemble (scores_of; the reconstructions are the first member's). Returns the accuracy."""
    print('Testing on %d test images:' % len(x_test))  # names the progress bar below
    y_pred, recons = scores_of(eval_model, kind, x_test, y_test, batch_size, members)
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
                   batch_size, save_dir, members=None):
    """Tests on affnist_set = (x, y, description) (real, or 'affNIST-style (generated)'),
    prints it beside the expanded-MNIST accuracy and writes <save_dir>/affnist_results.json.
    model: the --model name; kind: its MODELS kind; members: an ensemble, as in `test`."""
    x, y, description = affnist_set
    print('Testing on %d images of %s:' % (len(x), description))
    acc = accuracy_of(scores_of(eval_model, kind, x, y, batch_size, members)[0], y)
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


def logged_epochs(log_path, column):
    """(the last epoch logged, (epoch, value) of the first epoch with the largest finite
    `column` or None) of log.csv, epochs from 1: the second is the epoch BestWeights saved
    as best_model.h5."""
    last, best = None, None
    with open(log_path, errors='replace') as f:
        for row in csv.DictReader(f):
            try:
                epoch = int(float(row['epoch'])) + 1
            except (KeyError, TypeError, ValueError, OverflowError):
                continue
            last = epoch
            try:
                value = float(row[column])
            except (KeyError, TypeError, ValueError):
                continue
            if math.isfinite(value) and (best is None or value > best[1]):
                best = (epoch, value)
    return last, best


def held_out_report(model, template, test_data, batch_size, folder, monitor, info):
    """--validation_split: the test set's loss and accuracy, measured once each for the last
    epoch's weights (in `model` now) and for best_model.h5 (the epoch chosen on the held-out
    images), written to the RunFolder's test_results.json (atomically). Leaves best_model.h5's
    weights in the model.

    model: the compiled training model; template: the model whose weights the .h5 files hold
    (the same, unless keras 2.2.4's multi_gpu_model); test_data: (inputs, targets) as Keras'
    validation data; monitor: the val_ column of the accuracy; info: more keys to record."""
    accuracy_key = monitor[len('val_'):]
    last, best = logged_epochs(folder.log, monitor)
    log = C.evaluate_logs(model, test_data[0], test_data[1], batch_size)
    results = dict(info, monitor=monitor, epoch=last, test_accuracy=log[accuracy_key],
                   test_loss=log['loss'])
    best_path = folder.best
    if best is not None and os.path.isfile(best_path):
        load_weights_h5(template, best_path)
        log = C.evaluate_logs(model, test_data[0], test_data[1], batch_size)
        results['best_model'] = {'epoch': best[0], 'val_accuracy': best[1],
                                 'test_accuracy': log[accuracy_key], 'test_loss': log['loss']}
    path = folder.test_results
    with atomic_write(path) as tmp:
        with open(tmp, 'w') as f:
            json.dump(results, f, indent=2, sort_keys=True)
            f.write('\n')
    print('Test set, measured once: last epoch (%s) %.4f (loss %.4f)%s; saved to %s'
          % (last, results['test_accuracy'], results['test_loss'],
             '; best_model.h5 (epoch %d, chosen on the held-out images) %.4f'
             % (best[0], results['best_model']['test_accuracy'])
             if 'best_model' in results else '', path))
    return results
