"""--validation_split N: the last N training images validate (log.csv's val_ columns,
best_model.h5), the training batches never hold them, the test set is measured once at the
end into test_results.json; bad values are one error line; --resume keeps the split."""
import csv
import json
import os

import numpy as np
import pytest

import compat as C
import capsulenet
import datasets
import evaluation
import h5weights
import helpers
from helpers import assert_one_error_line, run_main

pytestmark = pytest.mark.end_to_end

TINY = helpers.TINY_FLAGS + ['--batch_size', '10', '--seed', '0', '--routings', '1']
N_TRAIN, N_VAL, N_TEST = 40, 12, 10


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp('mnist'))
    helpers.fake_mnist(folder, N_TRAIN, N_TEST)
    return folder


def train(capsys, save_dir, data_dir, *argv):
    return run_main(capsys, '--data_dir', data_dir, '--save_dir', save_dir, *(list(argv) + TINY))


def spy(monkeypatch):
    """Records what C.fit trained and validated on, and each held_out_report call."""
    seen = {'fit': [], 'reports': []}
    fit, report = C.fit, evaluation.held_out_report

    def spy_fit(model, train_data, epochs, validation_data=None, **kwargs):
        seen['fit'].append((train_data, validation_data))
        return fit(model, train_data, epochs, validation_data=validation_data, **kwargs)

    def spy_report(*args, **kwargs):
        seen['reports'].append(args)
        return report(*args, **kwargs)
    monkeypatch.setattr(C, 'fit', spy_fit)
    monkeypatch.setattr(evaluation, 'held_out_report', spy_report)
    return seen


def log_rows(save_dir):
    with open(os.path.join(save_dir, 'log.csv')) as f:
        return list(csv.DictReader(f))


def weights_of(path):
    C.clear_session(free_memory=False)
    model = capsulenet.CapsNet((28, 28, 1), 10, 1, **helpers.TINY)[0]
    h5weights.load_weights_h5(model, path)
    return model.get_weights()


def test_held_out_images_validate_and_are_never_trained_on(capsys, monkeypatch, tmp_path,
                                                          data_dir):
    seen = spy(monkeypatch)
    save_dir = str(tmp_path / 'run')
    code, out, err = train(capsys, save_dir, data_dir, '--epochs', '3', '--validation_split',
                           str(N_VAL), '--keep_checkpoints', '0')
    assert code == 0, err[-3000:]
    (x_train, _), (x_test, _) = helpers.utils.load_mnist(data_dir)
    batches, validation = seen['fit'][0]
    # the batches draw from the first N_TRAIN - N_VAL images only, each of them every epoch
    assert np.array_equal(batches.x, x_train[:N_TRAIN - N_VAL])
    for epoch in range(3):
        batches.set_epoch(epoch)
        drawn = np.concatenate([batches.order[i * 10:(i + 1) * 10] for i in range(len(batches))])
        assert sorted(drawn) == list(range(N_TRAIN - N_VAL))
    held_out = x_train[N_TRAIN - N_VAL:]
    assert not any((batches.x == image).all(axis=(1, 2, 3)).any() for image in held_out)
    # Keras validates on the held-out images, not on the test set
    (inputs, targets) = validation
    assert np.array_equal(inputs[0], held_out) and np.array_equal(targets[1], held_out)
    # best_model.h5 is the epoch with the best held-out accuracy (the first of equals)
    values = [float(r['val_capsnet_accuracy']) for r in log_rows(save_dir)]
    best_epoch = int(np.argmax(values)) + 1
    for a, b in zip(weights_of(os.path.join(save_dir, 'best_model.h5')),
                    weights_of(os.path.join(save_dir, 'weights-%02d.h5' % best_epoch))):
        np.testing.assert_array_equal(a, b)
    # the test set: once, at the end, into test_results.json
    assert len(seen['reports']) == 1
    with open(os.path.join(save_dir, 'test_results.json')) as f:
        results = json.load(f)
    assert set(results) == {'validation_split', 'train_images', 'test_images', 'monitor',
                            'epoch', 'test_accuracy', 'test_loss', 'best_model'}
    assert (results['validation_split'], results['train_images'], results['test_images'],
            results['epoch']) == (N_VAL, N_TRAIN - N_VAL, N_TEST, 3)
    assert results['best_model']['epoch'] == best_epoch
    assert results['best_model']['val_accuracy'] == pytest.approx(max(values))
    assert set(results['best_model']) == {'epoch', 'val_accuracy', 'test_accuracy', 'test_loss'}
    # the test accuracy recorded is the last epoch's, as the final test prints it
    printed = helpers.accuracy_from(out)
    assert results['test_accuracy'] == pytest.approx(printed, abs=1e-6)
    assert 0 <= results['test_loss'] and np.isfinite(results['test_loss'])
    assert 'Validation: the last %d training images' % N_VAL in out


def test_without_a_split_the_test_set_validates_and_says_so(capsys, monkeypatch, tmp_path,
                                                            data_dir):
    seen = spy(monkeypatch)
    save_dir = str(tmp_path / 'run')
    code, out, err = train(capsys, save_dir, data_dir, '--epochs', '1')
    assert code == 0, err[-3000:]
    (x_train, _), (x_test, _) = helpers.utils.load_mnist(data_dir)
    batches, (inputs, _) = seen['fit'][0]
    assert len(batches.x) == N_TRAIN and np.array_equal(inputs[0], x_test)
    assert 'val_ columns and best_model.h5 are test-set figures' in out
    assert seen['reports'] == [] and not os.path.exists(os.path.join(save_dir,
                                                                     'test_results.json'))


@pytest.mark.parametrize('argv, message', [
    (['--validation_split', str(N_TRAIN)], 'leaves no training images: the training set has 40'),
    (['--validation_split', '30', '--train_samples', '30'], 'the training set has 30'),
    (['--validation_split', '-1'], 'argument --validation_split: -1 must be >= 0'),
    (['--validation_split', 'x'], "'x' is not a valid int"),
    (['--validation_split', '5', '-t'], '-t tests the weights given'),
])
def test_bad_splits_are_one_line_and_write_nothing(capsys, tmp_path, data_dir, argv, message):
    save_dir = str(tmp_path / 'run')
    code, _, err = train(capsys, save_dir, data_dir, '--epochs', '1', *argv)
    assert_one_error_line(code, err, message)
    assert not os.path.exists(save_dir) or os.listdir(save_dir) == []


def test_resume_needs_the_split_it_started_with(capsys, tmp_path, data_dir):
    save_dir = str(tmp_path / 'run')
    code, _, err = train(capsys, save_dir, data_dir, '--epochs', '1', '--validation_split', '8')
    assert code == 0, err[-3000:]
    before = {n: os.path.getmtime(os.path.join(save_dir, n)) for n in os.listdir(save_dir)}
    for other in ('0', '9'):
        code, _, err = train(capsys, save_dir, data_dir, '--epochs', '2', '--resume',
                             '--validation_split', other)
        assert_one_error_line(code, err, 'was started with 8: resume it with '
                                         '--validation_split 8')
    assert {n: os.path.getmtime(os.path.join(save_dir, n)) for n in os.listdir(save_dir)} == before
    code, out, err = train(capsys, save_dir, data_dir, '--epochs', '2', '--resume',
                           '--validation_split', '8')
    assert code == 0 and 'Resuming after epoch 1' in out, err[-3000:]
    with open(os.path.join(save_dir, 'test_results.json')) as f:
        assert json.load(f)['epoch'] == 2


@pytest.mark.parametrize('before', ['nothing', 'an empty folder', 'a split run stopped before '
                                                                'its first checkpoint'])
def test_resume_with_a_split_starts_a_run_that_has_no_checkpoint(capsys, tmp_path, data_dir,
                                                                   before):
    # a resumable command (command.sh with --resume) runs from its first start: with nothing
    # to continue there is no split to keep, and the record is this run's
    save_dir = tmp_path / 'run'
    if before != 'nothing':
        save_dir.mkdir()
    if before.startswith('a split run'):
        (save_dir / 'validation_split.json').write_text('{"validation_split": 5, '
                                                        '"train_images": 35}\n')
    code, out, err = train(capsys, str(save_dir), data_dir, '--epochs', '1', '--resume',
                           '--validation_split', '8')
    assert code == 0 and 'training from epoch 1' in out, err[-3000:]
    with open(save_dir / 'validation_split.json') as f:
        assert json.load(f)['validation_split'] == 8
    assert len(log_rows(str(save_dir))) == 1


@pytest.mark.parametrize('dataset, options', [
    ('mnist', {}), ('affnist', {}), ('multimnist', {'multimnist_pairs': 2}), ('smallnorb', {})])
def test_hold_out_gives_the_test_sets_form(dataset, options):
    """Every data set holds out its last images in the form of its test set (shapes)."""
    rng = np.random.RandomState(0)
    shape = {'affnist': (40, 40, 1), 'smallnorb': (64, 64, 2)}.get(dataset, (28, 28, 1))
    n_class = 5 if dataset == 'smallnorb' else 10
    x = rng.rand(30, *shape).astype('float32')
    y = helpers.utils.to_categorical(np.arange(30) % n_class, n_class)
    (x_train, y_train), split = datasets.hold_out(dataset, (x, y), 10, **options)
    assert np.array_equal(x_train, x[:20]) and np.array_equal(y_train, y[:20])
    pairs = options.get('multimnist_pairs', 1)
    expected = {'affnist': (40, 40, 1), 'smallnorb': (48, 48, 2),
                'multimnist': (36, 36, 1)}.get(dataset, (28, 28, 1))
    assert split.x.shape == (10 * pairs,) + expected
    assert len(split.masks) == (2 if dataset == 'multimnist' else 1)
    if dataset != 'multimnist':
        assert np.array_equal(split.y, y[20:])
