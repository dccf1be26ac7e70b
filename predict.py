"""Classifies your own digit images with a trained model: class, capsule lengths, reconstruction.

    python predict.py my_digit.png                       # pretrained/capsnet_r3.h5
    python predict.py -w pretrained/capsnet_r3.h5 photos/ scan.jpg --recon_dir recon/
    python predict.py --model efficient -w pretrained/efficient_capsnet.h5 my_digit.png

Takes PNG and JPEG files and folders (their .png / .jpg / .jpeg files) of any size, colour or
grey, and prints for each image the predicted class and the lengths of the two longest digit
capsules. Each image is first made to look like an MNIST digit (`to_mnist`):
- grey: luma of colour images; transparent pixels count as white paper;
- polarity: MNIST digits are light on black. --invert auto inverts an image whose border
  (its outermost pixels, median) is lighter than mid-grey: dark ink on light paper;
  --invert yes / no force it;
- contrast: the background (the border's median) becomes black, the brightest pixel white;
- size: the digit's bounding box (pixels above CONTENT of the brightest) is scaled, keeping its
  aspect ratio, so that its longer side is 20 pixels, and put in a black 28x28 image with its
  centre of mass at pixel (14, 14): how MNIST's own digits were normalised (most MNIST test
  digits saved as PNG come out pixel for pixel as they went in).
--recon_dir DIR writes DIR/<name>_recon.png per image: the 28x28 input as the model saw it,
and beside it the decoder's reconstruction from the longest capsule.
"""
if __name__ == '__main__':  # before the imports below, which take seconds (TensorFlow)
    import safeio
    safeio.interrupt_is_one_line()

import os
import sys

import numpy as np

import capsulenet
import compat as C
import evaluation
import export_model
import export_weights
import utils
from safeio import UserError, run_cli

ROOT = os.path.dirname(os.path.abspath(__file__))
SHIPPED = {'capsnet': 'capsnet_r3.h5', 'efficient': 'efficient_capsnet.h5'}  # in pretrained/
EXTENSIONS = ('.png', '.jpg', '.jpeg')
FORMATS = ('PNG', 'JPEG')  # what PIL must find inside, whatever the file's name says
SIZE, BOX = 28, 20         # MNIST: the digit's longer side 20 pixels, in a 28x28 image
CONTENT = 0.05             # pixels above this fraction of the brightest one are the digit


# ---------------------------------------------------------------- the files
def image_paths(inputs):
    """The image files named by inputs (files, and folders: their PNG / JPEG files, sorted),
    in order. UserError for a path that does not exist or a folder without images."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, name) for name in os.listdir(item)
                           if name.lower().endswith(EXTENSIONS) and not name.startswith('.')
                           and os.path.isfile(os.path.join(item, name)))
            if not found:
                raise UserError('no PNG or JPEG files in folder %s' % item)
            paths += found
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise UserError('no such file or folder: %s' % item)
    return paths


def read_grey(path):
    """The image at path as grey levels [H, W] float32 in [0, 1] (0 black, 1 white).
    UserError naming path for a file that is no PNG / JPEG or is corrupt or truncated."""
    from PIL import Image, ImageOps
    try:
        with Image.open(path) as image:
            if image.format not in FORMATS:
                raise UserError('%s: a %s image; PNG or JPEG expected' % (path, image.format))
            image = ImageOps.exif_transpose(image)  # photos: as the camera was held
            image.load()
            return _grey_levels(image)
    except UserError:
        raise
    except Image.UnidentifiedImageError:
        raise UserError('%s: not a PNG or JPEG image (unreadable or another kind of file)' % path)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        # PIL reports a damaged file with any of these (broken PNG: SyntaxError)
        raise UserError('%s: corrupt or truncated image (%s)' % (path, e))


def _grey_levels(image):
    """A loaded PIL image -> [H, W] float32 in [0, 1]. 16-bit grey PNGs keep their range;
    transparency is composited over white (a digit drawn on a transparent canvas)."""
    from PIL import Image
    if image.mode in ('I', 'I;16', 'I;16B', 'I;16L'):  # 16-bit grey PNG
        return np.clip(np.asarray(image, dtype='float32') / 65535., 0, 1)
    if image.mode in ('RGBA', 'LA', 'PA') or 'transparency' in image.info:
        rgba = image.convert('RGBA')
        image = Image.alpha_composite(Image.new('RGBA', rgba.size, 'white'), rgba)
    return np.asarray(image.convert('L'), dtype='float32') / 255.


# ---------------------------------------------------------------- MNIST's look
def border(grey):
    """The outermost pixels of grey [H, W], as one vector."""
    return np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]])


def to_mnist(grey, invert='auto'):
    """grey [H, W] in [0, 1] -> (image [SIZE, SIZE] float32 in [0, 1], light digit on black,
    as MNIST's; whether it was inverted). invert: 'auto' (when the border's median is lighter
    than mid-grey), 'yes' or 'no'. The steps: module docstring."""
    inverted = invert == 'yes' or (invert == 'auto' and np.median(border(grey)) > 0.5)
    x = 1. - grey if inverted else grey
    x = x - np.median(border(x))  # the paper (or the scanner's black) becomes 0
    peak = x.max()
    if not peak > 0:  # a blank image: nothing to centre
        return np.zeros((SIZE, SIZE), 'float32'), inverted
    x = np.clip(x / peak, 0, 1)
    rows, cols = np.nonzero(x > CONTENT)
    digit = x[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    return centred(scaled(digit)), inverted


def scaled(digit):
    """digit [h, w] resized (Lanczos, clipped to [0, 1]) so its longer side is BOX pixels."""
    from PIL import Image
    h, w = digit.shape
    factor = BOX / float(max(h, w))
    size = (max(1, int(round(w * factor))), max(1, int(round(h * factor))))  # PIL: (w, h)
    if size == (w, h):
        return digit
    out = Image.fromarray(digit.astype('float32')).resize(size, Image.LANCZOS)
    return np.clip(np.asarray(out, dtype='float32'), 0, 1)


def centred(digit):
    """digit [h, w] (h, w <= SIZE) placed in a black [SIZE, SIZE] image with its centre of
    mass at the centre, moved only as far as keeps it whole."""
    h, w = digit.shape
    ys, xs = np.mgrid[:h, :w]
    mass = digit.sum()
    cy, cx = (ys * digit).sum() / mass, (xs * digit).sum() / mass
    # pixel (14, 14), not the geometric centre 13.5: with it 407 of MNIST's first 500 test
    # digits come out of to_mnist pixel for pixel as they are (with 13.5: 99)
    centre = SIZE / 2.
    top = int(np.clip(round(centre - cy), 0, SIZE - h))
    left = int(np.clip(round(centre - cx), 0, SIZE - w))
    out = np.zeros((SIZE, SIZE), 'float32')
    out[top:top + h, left:left + w] = digit
    return out


# ---------------------------------------------------------------- predicting
def recon_name(path, used):
    """<name>_recon.png for the image at path, made unique among `used` (a set, updated):
    two inputs named alike (a/1.png, b/1.png) get 1_recon.png and 1_2_recon.png."""
    stem = os.path.splitext(os.path.basename(path))[0]
    name, k = stem + '_recon.png', 1
    while name in used:
        k += 1
        name = '%s_%d_recon.png' % (stem, k)
    used.add(name)
    return name


def report_line(path, lengths, inverted):
    """'<path>: <class>  (capsule lengths: <class>: <len>, <second>: <len>[; inverted])'
    for capsule lengths [n_class]."""
    first, second = np.argsort(-lengths)[:2]
    return '%s: %d  (capsule lengths: %d: %.3f, %d: %.3f%s)' % (
        path, first, first, lengths[first], second, lengths[second],
        '; inverted' if inverted else '')


def predict(inputs, model='capsnet', weights=None, options=None, invert='auto', recon_dir=None):
    """Classifies the images named by inputs; returns the printed lines, one per image."""
    paths = image_paths(inputs)
    prepared = [to_mnist(read_grey(p), invert) for p in paths]  # every file checked first
    x = np.stack([image for image, _ in prepared])[..., None]  # [N, 28, 28, 1]
    weights = weights or os.path.join(ROOT, 'pretrained', SHIPPED[model])
    eval_model = export_model.load_eval_model(model, dict(options or {}), weights)
    lengths, recons = evaluation.predict(eval_model, 'capsule', x, batch_size=100, quiet=True)
    if recon_dir:
        os.makedirs(recon_dir, exist_ok=True)
    lines, used = [], set()
    for i, path in enumerate(paths):
        lines.append(report_line(path, lengths[i], prepared[i][1]))
        print(lines[-1])
        if recon_dir:
            pair = np.concatenate([x[i, ..., 0], recons[0][i, ..., 0]], axis=1)  # [28, 56]
            utils.save_image(pair, os.path.join(recon_dir, recon_name(path, used)))
    return lines


def main(argv=None):
    p = capsulenet.OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument('images', nargs='+', metavar='IMAGE_OR_FOLDER',
                   help='PNG / JPEG files, or folders of them')
    p.add_argument('--model', default='capsnet',
                   choices=sorted(k for k, s in capsulenet.MODELS.items() if s.kind == 'capsule'))
    p.add_argument('-w', '--weights', default=None,
                   help='weights file (.h5) of --model (default: its file in pretrained/: %s)'
                        % ', '.join('%s %s' % kv for kv in sorted(SHIPPED.items())))
    p.add_argument('--option', type=export_weights.parse_option, action='append', default=[],
                   help='model option key=value the weights were trained with, e.g. routings=1')
    p.add_argument('--invert', default='auto', choices=['auto', 'yes', 'no'],
                   help='make dark-on-light images light-on-dark as MNIST (auto: when the '
                        "image's border is lighter than mid-grey)")
    p.add_argument('--recon_dir', default=None,
                   help='write <name>_recon.png here per image: input as seen, reconstruction')
    args = p.parse_args(argv)

    def body():
        export_model.check_options(args.model, dict(args.option))
        C.configure_threads()
        predict(args.images, args.model, args.weights, dict(args.option), args.invert,
                args.recon_dir)
    return run_cli(body)


if __name__ == '__main__':
    sys.exit(main())
