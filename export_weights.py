"""Turns a training checkpoint into a shipped float16 weights file and its manifest entry.

    python export_weights.py --model efficient -w ~/runs/efficient/best_model.h5 \\
        --out pretrained/efficient_capsnet.h5 --log ~/runs/efficient/log.csv \\
        --selected "held-out validation"

Loads the float32 checkpoint into the model, measures its MNIST test accuracy (all 10,000
images and the first 500), writes the weights as float16 (half the file; every stack loads
it into float32 variables), loads that file back into the same model and measures again, and
records both in pretrained/manifest.json, which tests/test_pretrained.py holds the shipped
files to. Options given with --option key=value (e.g. routings=3) size the model; --selected
says how the checkpoint's epoch was chosen (the manifest's "selected").

Every input (options, checkpoint, log, the manifest beside --out, --out's folder) is checked
before anything is written, and the new file and manifest are both written in full before
either replaces the old one: bad input is one `error:` line with both left as they were.
"""
if __name__ == '__main__':  # before the imports below, which take seconds (TensorFlow)
    import safeio
    safeio.interrupt_is_one_line()

import hashlib
import json
import math
import os
import sys

import compat as C
import capsulenet
import evaluation
import h5weights
import utils
from modelcard import parse_option  # checked_options checks its value as capsulenet.py does
from safeio import OneLineParser, UserError, atomic_write, read_json_object, run_cli
from viewer import model_options

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
    """Epochs trained and the best / last validation accuracy of a Keras CSV log; UserError
    for a log without a val_...accuracy column or without a finite last value in it."""
    frame = utils.read_logs([log_path])[0][1]
    columns = [c for c in frame.columns if c.startswith('val_') and c.endswith('accuracy')]
    if not columns:
        raise UserError('%s has no validation accuracy column (val_...accuracy), only %s'
                        % (log_path, ', '.join(frame.columns)))
    summary = {'epochs': int(len(frame)), 'best_val_accuracy': float(frame[columns[0]].max()),
               'last_val_accuracy': float(frame[columns[0]].iloc[-1])}
    if not all(math.isfinite(v) for v in summary.values()):  # json would write NaN: not JSON
        raise UserError('%s: column %s ends in a value that is not a number'
                        % (log_path, columns[0]))
    return summary


# how a shipped file's epoch was chosen (manifest "selected"): only the first two leave its
# test accuracy unbiased; a best-test-epoch file overstates it
SELECTIONS = ('last epoch', 'held-out validation', 'best test epoch')


def selection(selected):
    """The manifest's {"selected": ...} for --selected; UserError for another value."""
    if selected not in SELECTIONS:
        raise UserError('--selected must be one of: %s (got %r)'
                        % (', '.join('"%s"' % s for s in SELECTIONS), selected))
    return {'selected': selected}


def sha256(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def manifest_path(out):
    """The manifest.json beside the file `out`."""
    return os.path.join(os.path.dirname(out) or '.', 'manifest.json')


def read_manifest(path):
    """The manifest at path as {file name: entry} ({} when there is none yet); UserError if it
    cannot be read or is not a JSON object (it is left as it is, not replaced)."""
    if not os.path.exists(path):
        return {}
    return read_json_object(path, 'a JSON object {file name: entry}')


def checked_options(model, options):
    """options {key: value} as capsulenet.py's flags of `model` give them (e.g. {'routings':
    3}), checked as that command line checks them; UserError for a key that is no such flag."""
    sizes = capsulenet.MODELS[model].flags
    unknown = sorted(key for key in options if key not in sizes)
    if unknown:
        raise UserError('--option %s: not an option of --model %s (it takes %s)' % (
            unknown[0], model, ', '.join(sizes)))
    return model_options(model, ['--%s=%s' % item for item in sorted(options.items())])


def check_out(out, weights):
    """UserError unless `out` can be written as a new file beside the existing ones."""
    folder = os.path.dirname(out) or '.'
    if os.path.isdir(out):
        raise UserError('--out %s is a folder; name the .h5 file to write' % out)
    if not os.path.isdir(folder):
        raise UserError('--out %s: no folder %s' % (out, folder))
    if not os.access(folder, os.W_OK):
        raise UserError('--out %s: cannot write in %s' % (out, folder))
    if os.path.exists(out) and os.path.exists(weights) and os.path.samefile(out, weights):
        raise UserError('--out %s is the checkpoint -w itself: its float32 weights would be '
                        'replaced; name another file' % out)


def export(model, weights, out, options=None, log=None, data_dir=None, note=None,
           selected=None):
    """The whole export; returns the manifest entry written for `out`. Everything is checked
    before anything is written; `out` and its manifest are written to temp files in full, then
    renamed over the old ones (UserError: both left as they were). selected: how the
    checkpoint's epoch was chosen (SELECTIONS; None: not recorded)."""
    options = checked_options(model, dict(options or {}))
    chosen = selection(selected) if selected is not None else {}
    manifest = read_manifest(manifest_path(out))
    check_out(out, weights)
    summary = log_summary(log) if log else {}
    kind = capsulenet.MODELS[model].kind
    train_model, eval_model = load_models(model, options, weights)
    (_, _), (x_test, y_test) = utils.load_mnist(data_dir, train_samples=0)
    f32_all, f32_first = scored(eval_model, kind, x_test, y_test)
    with atomic_write(manifest_path(out)) as new_manifest, atomic_write(out) as new_out:
        h5weights.save_weights_h5(train_model, new_out, dtype='float16')
        h5weights.load_weights_h5(train_model, new_out)  # float16 -> the same float32 variables
        f16_all, f16_first = scored(eval_model, kind, x_test, y_test)
        entry = {'model': model, 'options': options, 'dtype': 'float16',
                 'bytes': os.path.getsize(new_out), 'sha256': sha256(new_out),
                 'float32_test_accuracy': f32_all, 'float32_first%d_accuracy' % FIRST: f32_first,
                 'float16_test_accuracy': f16_all, 'float16_first%d_accuracy' % FIRST: f16_first,
                 'stack': 'keras %s, %s backend' % (C.keras.__version__, C.BACKEND)}
        entry.update(summary)
        if note:
            entry['note'] = note
        entry.update(chosen)
        manifest[os.path.basename(out)] = entry
        with open(new_manifest, 'w') as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.write('\n')
    return entry  # out renamed into place first, then the manifest naming its sha256


def main(argv=None):
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument('--model', default='capsnet', choices=sorted(capsulenet.MODELS))
    p.add_argument('-w', '--weights', required=True, help='the float32 checkpoint (.h5)')
    p.add_argument('--out', required=True, help='the float16 file to write')
    p.add_argument('--option', type=parse_option, action='append', default=[],
                   help='model option key=value, e.g. routings=3 (repeatable)')
    p.add_argument('--log', default=None, help="the run's log.csv (epochs, accuracies)")
    p.add_argument('--data_dir', default=None)
    p.add_argument('--note', default=None, help='free text kept in the manifest entry')
    p.add_argument('--selected', required=True, choices=SELECTIONS,
                   help='how the checkpoint was chosen, recorded as the manifest\'s "selected": '
                        '"last epoch", "held-out validation" (best_model.h5 of a '
                        '--validation_split run) or "best test epoch" (best_model.h5 of a run '
                        'validated on the test set: its test accuracy is optimistic)')
    args = p.parse_args(argv)

    def body():
        entry = export(args.model, args.weights, args.out, dict(args.option), args.log,
                       args.data_dir, args.note, args.selected)
        print(json.dumps(entry, indent=2, sort_keys=True))
        print('%s: selected by %s' % (args.out, entry['selected']))
    return run_cli(body)


if __name__ == '__main__':
    sys.exit(main())
