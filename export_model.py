"""Writes a trained model as one full-model file that a plain keras.models.load_model reads.

    python export_model.py -w pretrained/capsnet_r3.h5 --out capsnet_r3.keras
    python export_model.py -w pretrained/efficient_capsnet.h5 --out efficient_capsnet.keras
    python export_model.py -w result/trained_model.h5 --out my_model.keras  # any capsule run

The model's shape (network, data set, input size, classes, options) comes from the model.json
a training run writes beside its weights (modelcard.py; the shipped files: pretrained's
manifest.json), else MNIST's; --model, --dataset, --input_shape, --n_class and --option
override it. Then, anywhere the repo's modules are importable, on any backend:

    import capsulelayers, keras
    model = keras.models.load_model('capsnet_r3.keras')  # safe mode, no custom_objects
    lengths, reconstruction = model.predict(images)       # [N, H, W, C] in [0, 1]

The file holds the test-time model (image -> [capsule lengths [N, n_class], reconstruction of
the longest capsule [N, H, W, C]]) with float32 weights, no optimizer. Keras 3 writes a .keras
file; keras 2.2.4 a full-model .h5 (model.save). Its custom layers are registered serializable
(compat.serializable), the models hold no Lambda, so loading executes nothing from the file.
After writing, the file is loaded back that way and its capsule lengths compared with the
weights file's (on MNIST test images for a 28x28x1 model, else on seeded random images); the
export fails if they differ.
"""
import os
import sys

import numpy as np

import compat as C
import capsulenet
import datasets
import export_weights
import h5weights
import modelcard
import utils
from safeio import UserError, atomic_write, run_cli

EXTENSION = '.keras' if C.KERAS3 else '.h5'
CHECK_IMAGES = 100  # images the reloaded model is compared on
TOLERANCE = 1e-5    # capsule lengths lie in [0, 1]; the same float32 ops give the same numbers


def check_card(card):
    """card (modelcard.Card) with its options checked as capsulenet.py checks its flags;
    UserError for a model that is no capsule model, an unknown data set or option."""
    capsule = sorted(k for k, s in capsulenet.MODELS.items() if s.kind == 'capsule')
    if card.model not in capsule:
        raise UserError('--model %s%s: only capsule models (%s) have capsule lengths and a '
                        'decoder to predict and export with' % (
                            card.model, ' (from %s)' % card.source if card.source else '',
                            ', '.join(capsule)))
    if card.dataset not in datasets.DATASETS:
        raise UserError('--dataset %s%s is none of %s' % (
            card.dataset, ' (from %s)' % card.source if card.source else '',
            ', '.join(sorted(datasets.DATASETS))))
    return card._replace(options=export_weights.checked_options(card.model, card.options))


def load_card(card, weights):
    """The test-time model card (modelcard.Card) describes, the weights file loaded as `-t -w`
    loads it (arrays only): image [N, H, W, C] -> [lengths [N, n_class], reconstruction of the
    longest capsule [N, H, W, C] (MultiMNIST: and of the second longest)]. UserError when the
    weights do not fit, saying where the model's shape came from. The card's options are
    builder keywords, taken as they are (the command lines check_card them first)."""
    C.clear_session()
    train_model, eval_model, _ = capsulenet.build_models(
        card.model, card.input_shape, card.n_class, card.dataset, **card.options)
    try:
        h5weights.load_weights_h5(train_model, weights)
    except UserError as e:
        if card.source is None and os.path.isfile(weights):
            raise UserError('%s; it does not fit --model %s on %s images with %d classes, and '
                            'no %s beside it records how it was built: give the flags it was '
                            'trained with (--model, --dataset, --input_shape HxWxC, --n_class N, '
                            '--option key=value)' % (e, card.model, shape_text(card.input_shape),
                                                     card.n_class, modelcard.FILE))
        if card.source is not None:
            raise UserError('%s (the model built as %s says)' % (e, card.source))
        raise
    return eval_model


def load_eval_model(model, options, weights):
    """load_card of MNIST's shape (28x28x1, 10 classes) for MODELS[model] sized by options
    (builder keywords, e.g. routings=3)."""
    return load_card(modelcard.MNIST._replace(model=model, options=dict(options)), weights)


def shape_text(shape):
    return 'x'.join(str(d) for d in shape)


def check_images(card, data_dir=None):
    """(images [CHECK_IMAGES, H, W, C] the exported model is compared on, what they are):
    MNIST's first test images for a 28x28x1 model, else seeded uniform noise."""
    if tuple(card.input_shape) == (28, 28, 1):
        (_, _), (x, _) = utils.load_mnist(data_dir, train_samples=0, test_samples=CHECK_IMAGES)
        return x, 'MNIST test images'
    rng = np.random.RandomState(0)
    x = rng.uniform(size=(CHECK_IMAGES,) + tuple(card.input_shape)).astype('float32')
    return x, 'random %s images' % shape_text(card.input_shape)


def lengths_of(eval_model, x):
    """Capsule lengths [N, n_class] of images x [N, H, W, C]."""
    return np.asarray(eval_model.predict(x, batch_size=100, verbose=0)[0])


def check_out(out):
    """UserError unless out names a file this Keras writes full models to (.keras on Keras 3,
    .h5 on keras 2.2.4) in an existing folder."""
    if not out.endswith(EXTENSION):
        raise UserError('--out %s: keras %s writes full models as %s files'
                        % (out, C.keras.__version__, EXTENSION))
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise UserError('--out %s: folder %s does not exist' % (out, folder))


def save_full_model(eval_model, out):
    """eval_model written to `out` (check_out) atomically: a failed save leaves an earlier
    file at `out` whole."""
    check_out(out)
    with atomic_write(out) as tmp:  # the temp name keeps the extension Keras picks the format by
        eval_model.save(tmp)


def load_full_model(path):
    """keras.models.load_model(path) as a user calls it: no custom_objects (the repo's layers
    are registered at import) and, on Keras 3, safe mode (a Lambda in the file is refused)."""
    if C.KERAS3:
        return C.keras.models.load_model(path, safe_mode=True)
    return C.keras.models.load_model(path)


def export(card, weights, out, data_dir=None):
    """The whole export of the model card (modelcard.Card) describes; returns {'bytes': size
    of out, 'max_length_difference': the largest |length from out - length from weights| over
    check_images, 'images': what they are}."""
    check_out(out)  # before the seconds of building and loading
    eval_model = load_card(card, weights)
    x, images = check_images(card, data_dir)
    expected = lengths_of(eval_model, x)
    save_full_model(eval_model, out)
    C.clear_session(free_memory=False)
    difference = float(np.abs(lengths_of(load_full_model(out), x) - expected).max())
    if not difference <= TOLERANCE:  # NaN fails too
        raise UserError('%s loads, but its capsule lengths differ from %s by up to %g'
                        % (out, weights, difference))
    return {'bytes': os.path.getsize(out), 'max_length_difference': difference,
            'images': '%d %s' % (len(x), images)}


def main(argv=None):
    p = capsulenet.OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument('-w', '--weights', required=True, help='the weights file (.h5) to export')
    p.add_argument('--out', required=True, help='the full-model file to write (%s)' % EXTENSION)
    modelcard.add_flags(p, ['capsnet', 'efficient'], sorted(datasets.DATASETS))
    p.add_argument('--data_dir', default=None,
                   help='MNIST idx files, for a 28x28x1 model\'s check (default data/mnist)')
    args = p.parse_args(argv)

    def body():
        card = check_card(modelcard.from_args(args))
        C.configure_threads()
        result = export(card, args.weights, args.out, args.data_dir)
        print('wrote %s (%s bytes): --model %s, %s images, %d classes; loaded back with '
              'keras.models.load_model, its capsule lengths differ from those of %s by at '
              'most %.1g on %s' % (args.out, format(result['bytes'], ','), card.model,
                                   shape_text(card.input_shape), card.n_class, args.weights,
                                   result['max_length_difference'], result['images']))
    return run_cli(body)


if __name__ == '__main__':
    sys.exit(main())
