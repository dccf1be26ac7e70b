"""What a weights file was trained as: model.json, written in --save_dir by a training run and
read back by predict.py and export_model.py, which rebuild the model from it without its flags.

    {"model": "capsnet", "dataset": "folder", "input_shape": [32, 32, 3], "n_class": 3,
     "options": {"conv1_filters": 64}, "class_names": ["cat", "dog", "fish"]}

options: the model flags given (the rest are the builder's defaults, or the data set's own
network, capsulenet.dataset_network); class_names: the class folders of --dataset folder, CIFAR-10's
names, or null (classes are numbers). It describes every weights file of its folder
(trained_model.h5, best_model.h5, weights-XX.h5): keep it beside a copied weights file.

Card (`resolve`): the model.json beside the weights file; else that folder's manifest.json entry
for it (the shipped files in pretrained/); else MNIST's (28x28x1, 10 classes, --model capsnet).
The flags of `add_flags` (--model, --dataset, --input_shape, --n_class, --option) override it.
No Keras here: capsulenet.py imports it to write the record; what the names mean (which models,
data sets and flags exist) is checked where the model is built (export_model.load_card).
"""
import argparse
import collections
import json
import os

import cifar10
import own_data
from safeio import UserError, atomic_write, read_json_object

FILE = 'model.json'  # RunFolder.MODEL
MANIFEST = 'manifest.json'  # export_weights.py's, beside the shipped files
MAX_BYTES = 1 << 20  # a record is a few hundred bytes; a larger file is no record
# source: the file the card was read from (None: MNIST's defaults, nothing read)
Card = collections.namedtuple('Card', 'model dataset input_shape n_class options class_names '
                                      'source')
MNIST = Card('capsnet', 'mnist', (28, 28, 1), 10, {}, None, None)


# ---------------------------------------------------------------- writing
def class_names(dataset, data_dir=None):
    """The class names of a data set, in label order: the folder's (own_data.list_folder),
    CIFAR-10's, or None (classes are their numbers)."""
    if dataset == 'folder':
        return list(own_data.list_folder(data_dir)[0])
    if dataset == 'cifar10':
        return list(cifar10.CLASS_NAMES)
    return None


def record(path, model, dataset, input_shape, n_class, options, data_dir=None):
    """Writes the record at path (atomically): the model built as build_models(model,
    input_shape [H, W, C], n_class, dataset, **options)."""
    card = {'model': model, 'dataset': dataset, 'input_shape': [int(d) for d in input_shape],
            'n_class': int(n_class), 'options': dict(options),
            'class_names': class_names(dataset, data_dir)}
    with atomic_write(path) as tmp:
        with open(tmp, 'w') as f:
            json.dump(card, f, indent=2, sort_keys=True)
            f.write('\n')


# ---------------------------------------------------------------- reading
def _positive(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def card_of(entry, source):
    """A Card of the JSON object entry (a model.json, or a manifest entry: model and options
    only); UserError naming source for a field that is missing or of the wrong kind."""
    def bad(field, expected):
        return UserError('%s: "%s" must be %s, not %s' % (source, field, expected,
                                                          json.dumps(entry.get(field))))
    card = dict(MNIST._asdict(), source=source)
    card.update((k, entry[k]) for k in Card._fields if k in entry and k != 'source')
    if not isinstance(card['model'], str) or 'model' not in entry:
        raise bad('model', 'a model name')
    if not isinstance(card['dataset'], str):
        raise bad('dataset', 'a data set name')
    shape = card['input_shape']
    if not (isinstance(shape, (list, tuple)) and len(shape) == 3 and all(map(_positive, shape))):
        raise bad('input_shape', '[height, width, channels]')
    if not _positive(card['n_class']) or card['n_class'] < 2:
        raise bad('n_class', 'a number of classes >= 2')
    if not isinstance(card['options'], dict):
        raise bad('options', 'an object {flag: value}')
    names = card['class_names']
    if names is not None and not (isinstance(names, list) and len(names) == card['n_class'] and
                                  all(isinstance(n, str) for n in names)):
        raise bad('class_names', 'null or %d names' % card['n_class'])
    card['input_shape'] = tuple(shape)
    return Card(**card)


def _read_json(path):
    """The JSON object in path; UserError when it is none."""
    return read_json_object(path, 'a JSON object (a model record)', MAX_BYTES)


def beside(weights):
    """The Card of the weights file at path `weights` from the model.json beside it, else its
    entry in the manifest.json beside it; None when neither is there."""
    folder = os.path.dirname(os.path.abspath(weights))
    path = os.path.join(folder, FILE)
    if os.path.isfile(path):
        return card_of(_read_json(path), path)
    manifest = os.path.join(folder, MANIFEST)
    if os.path.isfile(manifest):
        entry = _read_json(manifest).get(os.path.basename(weights))
        if isinstance(entry, dict):
            return card_of(entry, '%s (entry %s)' % (manifest, os.path.basename(weights)))
    return None


def resolve(weights, model=None, dataset=None, input_shape=None, n_class=None, options=None):
    """The Card of the weights file (`beside`, else MNIST's) with the given fields replaced;
    options ({flag: value}) are added to the recorded ones. A --model other than the
    recorded one starts from that model's defaults (the recorded options are another's)."""
    card = beside(weights) if weights and os.path.isfile(weights) else None
    card = card or MNIST
    if model is not None and model != card.model:
        card = card._replace(model=model, options={})
    changes = dict((k, v) for k, v in (('dataset', dataset), ('input_shape', input_shape),
                                       ('n_class', n_class)) if v is not None)
    if n_class is not None and card.class_names and len(card.class_names) != n_class:
        changes['class_names'] = None
    return card._replace(options=dict(card.options, **dict(options or {})), **changes)


# ---------------------------------------------------------------- the flags
def parse_shape(text):
    """'32x32x3' -> (32, 32, 3)."""
    try:
        shape = tuple(int(d) for d in text.lower().split('x'))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError('expected HEIGHTxWIDTHxCHANNELS, e.g. 32x32x3, got %r'
                                         % text)
    return shape


def parse_option(text):
    """'key=value' -> (key, value); the value is checked as capsulenet.py checks its flag."""
    key, _, value = text.partition('=')
    if not key or not value:
        raise argparse.ArgumentTypeError('expected key=value, got %r' % text)
    return key, value


def add_flags(parser, models, datasets):
    """The flags that override the record: --model (one of models), --dataset (one of
    datasets), --input_shape, --n_class, --option (repeatable)."""
    where = 'default: from the model.json beside the weights file, else MNIST\'s'
    parser.add_argument('--model', default=None, choices=models,
                        help='the network of the weights (%s, capsnet)' % where)
    parser.add_argument('--dataset', default=None, choices=datasets,
                        help='the --dataset it was trained on: its network and the way images '
                             'are prepared (%s, mnist)' % where)
    parser.add_argument('--input_shape', default=None, type=parse_shape, metavar='HxWxC',
                        help='the images it takes, e.g. 32x32x3 (%s, 28x28x1)' % where)
    parser.add_argument('--n_class', default=None, type=int, metavar='N',
                        help='its number of classes (%s, 10)' % where)
    parser.add_argument('--option', type=parse_option, action='append', default=[],
                        help='model option key=value it was trained with, e.g. routings=1 '
                             '(added to the recorded ones; repeatable)')


def from_args(args):
    """resolve() of the parsed flags of add_flags (args.weights: the weights file)."""
    if args.n_class is not None and args.n_class < 2:
        raise UserError('--n_class %d: a classifier has at least 2 classes' % args.n_class)
    return resolve(args.weights, args.model, args.dataset, args.input_shape, args.n_class,
                   dict(args.option))
