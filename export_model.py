"""Writes a trained model as one full-model file that a plain keras.models.load_model reads.

    python export_model.py -w pretrained/capsnet_r3.h5 --out capsnet_r3.keras
    python export_model.py --model efficient -w pretrained/efficient_capsnet.h5 \\
        --out efficient_capsnet.keras

Then, anywhere the repo's modules are importable, on any backend:

    import capsulelayers, keras
    model = keras.models.load_model('capsnet_r3.keras')  # safe mode, no custom_objects
    lengths, reconstruction = model.predict(images)       # [N, 28, 28, 1] in [0, 1]

The file holds the test-time model (image -> [capsule lengths [N, 10], reconstruction of the
longest capsule [N, 28, 28, 1]]) with float32 weights, no optimizer. Keras 3 writes a .keras
file; keras 2.2.4 a full-model .h5 (model.save). Its custom layers are registered serializable
(compat.serializable), the models hold no Lambda, so loading executes nothing from the file.
After writing, the file is loaded back that way and its capsule lengths compared with the
weights file's on MNIST test images; the export fails if they differ.
"""
import os
import sys

import numpy as np

import compat as C
import capsulenet
import export_weights
import utils
from safeio import UserError, atomic_write, run_cli

EXTENSION = '.keras' if C.KERAS3 else '.h5'
CHECK_IMAGES = 100  # MNIST test images the reloaded model is compared on
TOLERANCE = 1e-5    # capsule lengths lie in [0, 1]; the same float32 ops give the same numbers


def check_options(model, options):
    """UserError for a --option key=value that is none of MODELS[model]'s flags."""
    unknown = sorted(set(options) - set(capsulenet.MODELS[model].flags))
    if unknown:
        raise UserError('--option %s does not apply to --model %s (it takes %s)'
                        % (unknown[0], model, ', '.join(capsulenet.MODELS[model].flags)))


def load_eval_model(model, options, weights):
    """The test-time model of MODELS[model] sized for MNIST by options (builder keywords, e.g.
    routings=3), the weights file loaded as `-t -w` loads it (arrays only): image
    [N, 28, 28, 1] -> [lengths [N, 10], reconstruction [N, 28, 28, 1]]."""
    return export_weights.load_models(model, options, weights)[1]


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


def export(model, weights, out, options=None, data_dir=None):
    """The whole export; returns {'bytes': size of out, 'max_length_difference': the largest
    |length from out - length from weights| over CHECK_IMAGES MNIST test images}."""
    check_out(out)  # before the seconds of building and loading
    eval_model = load_eval_model(model, dict(options or {}), weights)
    (_, _), (x, _) = utils.load_mnist(data_dir, train_samples=0, test_samples=CHECK_IMAGES)
    expected = lengths_of(eval_model, x)
    save_full_model(eval_model, out)
    C.clear_session(free_memory=False)
    difference = float(np.abs(lengths_of(load_full_model(out), x) - expected).max())
    if not difference <= TOLERANCE:  # NaN fails too
        raise UserError('%s loads, but its capsule lengths differ from %s by up to %g'
                        % (out, weights, difference))
    return {'bytes': os.path.getsize(out), 'max_length_difference': difference}


def main(argv=None):
    p = capsulenet.OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument('--model', default='capsnet', choices=['capsnet', 'efficient'])
    p.add_argument('-w', '--weights', required=True, help='the weights file (.h5) to export')
    p.add_argument('--out', required=True, help='the full-model file to write (%s)' % EXTENSION)
    p.add_argument('--option', type=export_weights.parse_option, action='append', default=[],
                   help='model option key=value, e.g. routings=3 (repeatable)')
    p.add_argument('--data_dir', default=None, help='MNIST idx files (default data/mnist)')
    args = p.parse_args(argv)

    def body():
        check_options(args.model, dict(args.option))
        C.configure_threads()
        result = export(args.model, args.weights, args.out, dict(args.option), args.data_dir)
        print('wrote %s (%s bytes); loaded back with keras.models.load_model, its capsule '
              'lengths differ from those of %s by at most %.1g on %d MNIST test images'
              % (args.out, format(result['bytes'], ','), args.weights,
                 result['max_length_difference'], CHECK_IMAGES))
    return run_cli(body)


if __name__ == '__main__':
    sys.exit(main())
