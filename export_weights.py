"""Turns a training checkpoint into a shipped float16 weights file and its manifest entry.

    python export_weights.py --model efficient -w ~/runs/efficient/best_model.h5 \\
        --out pretrained/efficient_capsnet.h5 --log ~/runs/efficient/log.csv

Loads the float32 checkpoint into the model, measures its MNIST test accuracy (all 10,000
images and the first 500), writes the weights as float16 (half the file; every stack loads
it into float32 variables), loads that file back into the same model and measures again, and
records both in pretrained/manifest.json, which tests/test_pretrained.py holds the shipped
files to. Options given with --option key=value (e.g. routings=3) size the model.
"""
if __name__ == '__main__':  # before the imports below, which take seconds (TensorFlow)
    import safeio
    safeio.interrupt_is_one_line()

import argparse
import hashlib
import json
import os
import sys

import compat as C
import capsulenet
import evaluation
import h5weights
import utils
from safeio import UserError, atomic_write

FIRST = 500  # the test images a CI test classifies with the shipped file


def load_models(model, options, weights):
    """(train_model, eval_model) of `model` sized by options for MNIST, `weights` loaded."""
    C.clear_session()
    train_model, eval_model, _ = capsulenet.build_models(model, (28, 28, 1), 10, **options)
    h5weights.load_weights_h5(train_model, weights)
    return train_model, eval_model


def scored(eval_model, kind, x, y):
    """(accuracy on all of x, on its first FIRST images); x: [N, 28, 28, 1], y: one-hot
    [N, 10]; kind: the model's MODELS kind."""
    scores, _ = evaluation.predict(eval_model, kind, x, batch_size=100, quiet=True)
    return evaluation.accuracy_of(scores, y), evaluation.accuracy_of(scores[:FIRST], y[:FIRST])


def accuracies(model, options, weights, x, y):
    """scored() of a fresh `model` with the weights file `weights` loaded."""
    return scored(load_models(model, options, weights)[1], capsulenet.MODELS[model].kind, x, y)


def log_summary(log_path):
    """Epochs trained and the best / last validation accuracy of a Keras CSV log."""
    frame = utils.read_logs([log_path])[0][1]
    column = [c for c in frame.columns if c.startswith('val_') and c.endswith('accuracy')][0]
    return {'epochs': int(len(frame)), 'best_val_accuracy': float(frame[column].max()),
            'last_val_accuracy': float(frame[column].iloc[-1])}


def sha256(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def update_manifest(path, name, entry):
    """Sets manifest[name] = entry in the JSON file at path (written atomically)."""
    manifest = {}
    if os.path.exists(path):
        with open(path) as f:
            manifest = json.load(f)
    manifest[name] = entry
    with atomic_write(path) as tmp:
        with open(tmp, 'w') as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.write('\n')


def export(model, weights, out, options=None, log=None, data_dir=None, note=None):
    """The whole export; returns the manifest entry written for `out`."""
    options = dict(options or {})
    (_, _), (x_test, y_test) = utils.load_mnist(data_dir, train_samples=0)
    kind = capsulenet.MODELS[model].kind
    train_model, eval_model = load_models(model, options, weights)
    f32_all, f32_first = scored(eval_model, kind, x_test, y_test)
    h5weights.save_weights_h5(train_model, out, dtype='float16')
    h5weights.load_weights_h5(train_model, out)  # float16 file -> the same float32 variables
    f16_all, f16_first = scored(eval_model, kind, x_test, y_test)
    entry = {'model': model, 'options': options, 'dtype': 'float16',
             'bytes': os.path.getsize(out), 'sha256': sha256(out),
             'float32_test_accuracy': f32_all, 'float32_first%d_accuracy' % FIRST: f32_first,
             'float16_test_accuracy': f16_all, 'float16_first%d_accuracy' % FIRST: f16_first,
             'stack': 'keras %s, %s backend' % (C.keras.__version__, C.BACKEND)}
    if log:
        entry.update(log_summary(log))
    if note:
        entry['note'] = note
    update_manifest(os.path.join(os.path.dirname(out) or '.', 'manifest.json'),
                    os.path.basename(out), entry)
    return entry


def parse_option(text):
    key, _, value = text.partition('=')
    if not key or not value:
        raise argparse.ArgumentTypeError('expected key=value, got %r' % text)
    return key, int(value) if value.isdigit() else value


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--model', default='capsnet', choices=sorted(capsulenet.MODELS))
    p.add_argument('-w', '--weights', required=True, help='the float32 checkpoint (.h5)')
    p.add_argument('--out', required=True, help='the float16 file to write')
    p.add_argument('--option', type=parse_option, action='append', default=[],
                   help='model option key=value, e.g. routings=3 (repeatable)')
    p.add_argument('--log', default=None, help="the run's log.csv (epochs, accuracies)")
    p.add_argument('--data_dir', default=None)
    p.add_argument('--note', default=None, help='free text kept in the manifest entry')
    args = p.parse_args(argv)
    try:
        entry = export(args.model, args.weights, args.out, dict(args.option), args.log,
                       args.data_dir, args.note)
    except UserError as e:
        print('error: %s' % e, file=sys.stderr)
        return 2
    print(json.dumps(entry, indent=2, sort_keys=True))
    return 0


if __name__ == '__main__':
    sys.exit(main())
