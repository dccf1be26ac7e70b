"""Classifies your own images with a trained capsule model: class, capsule lengths, reconstruction.

    python predict.py my_digit.png                       # pretrained/capsnet_r3.h5
    python predict.py -w pretrained/capsnet_r3.h5 photos/ scan.jpg --recon_dir recon/
    python predict.py -w pretrained/efficient_capsnet.h5 my_digit.png
    python predict.py -w result/trained_model.h5 cat.jpg  # a model trained on your own data

Takes PNG and JPEG files and folders (their .png / .jpg / .jpeg files) of any size, colour or
grey, and prints for each image the predicted class (its name for a --dataset folder or cifar10
model) and the lengths of the two longest capsules. The model's shape (network, the data set it
was trained on, input size, channels, classes, options) comes from the model.json a training
run writes beside its weights (modelcard.py; the shipped files: pretrained's manifest.json),
else it is MNIST's; --model, --dataset, --input_shape, --n_class and --option override it.

Each image is made to look like the model's training images (`prepare`):
- channels: RGB for a 3-channel model (grey images repeated), luma for a 1-channel one;
  transparent pixels count as white paper;
- digit models (1 channel, --dataset mnist, affnist, multimnist): MNIST's look (`to_mnist`):
  - polarity: MNIST digits are light on black. --invert auto inverts an image whose border
    (its outermost pixels, median) is lighter than mid-grey: dark ink on light paper;
  - contrast: the background (the border's median) becomes black, the brightest pixel white;
  - size: the digit's bounding box (pixels above CONTENT of the brightest) is scaled, keeping
    its aspect ratio, so that its longer side is 20 pixels, and put in a black image of the
    model's size with its centre of mass at the centre: how MNIST's own digits were normalised
    (most MNIST test digits saved as PNG come out pixel for pixel as they went in);
- other models: the whole image scaled, keeping its aspect ratio, to fit the model's input
  (CIFAR-10: the 32x32 its test images are cropped from, then the centre crop), the rest
  filled with the colour of its border (median); an image of the input's size is taken as it
  is. No inversion unless --invert yes.
--invert yes / no force the inversion (1 - pixel) for any model.
--recon_dir DIR writes DIR/<name>_recon.png per image: the input as the model saw it, and
beside it the decoder's reconstruction from the longest capsule.
"""
if __name__ == '__main__':  # before the imports below, which take seconds (TensorFlow)
    import safeio
    safeio.interrupt_is_one_line()

import os
import sys

import numpy as np

import capsulenet
import cifar10
import compat as C
import datasets
import evaluation
import export_model
import modelcard
import utils
from safeio import UserError, run_cli

ROOT = os.path.dirname(os.path.abspath(__file__))
SHIPPED = {'capsnet': 'capsnet_r3.h5', 'efficient': 'efficient_capsnet.h5'}  # in pretrained/
EXTENSIONS = ('.png', '.jpg', '.jpeg')
FORMATS = ('PNG', 'JPEG')  # what PIL must find inside, whatever the file's name says
SIZE, BOX = 28, 20         # MNIST: the digit's longer side 20 pixels, in a 28x28 image
CONTENT = 0.05             # pixels above this fraction of the brightest one are the digit
# data sets of MNIST digits (light on black, 20-pixel box, centred): their models get MNIST's look
DIGIT_SETS = ('mnist', 'affnist', 'multimnist')
# data sets whose test images are centre crops of larger ones: (height, width) of those
CROPPED_FROM = {'cifar10': (cifar10.SIZE, cifar10.SIZE)}


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
    """read_pixels(path) as grey levels [H, W]."""
    return read_pixels(path, colour=False)


def read_pixels(path, colour=False):
    """The image at path as float32 in [0, 1] (0 black, 1 white): RGB [H, W, 3] if colour,
    else grey levels [H, W]. UserError naming path for a file that is no PNG / JPEG or is
    corrupt or truncated."""
    from PIL import Image, ImageOps
    try:
        with Image.open(path) as image:
            if image.format not in FORMATS:
                raise UserError('%s: a %s image; PNG or JPEG expected' % (path, image.format))
            image = ImageOps.exif_transpose(image)  # photos: as the camera was held
            image.load()
            return _levels(image, colour)
    except UserError:
        raise
    except Image.UnidentifiedImageError:
        raise UserError('%s: not a PNG or JPEG image (unreadable or another kind of file)' % path)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        # PIL reports a damaged file with any of these (broken PNG: SyntaxError)
        raise UserError('%s: corrupt or truncated image (%s)' % (path, e))


def _levels(image, colour):
    """A loaded PIL image -> [H, W, 3] (colour) or [H, W] float32 in [0, 1]. 16-bit grey PNGs
    keep their range; transparency is composited over white (a drawing on a transparent
    canvas); a grey image in colour is its grey level in each channel."""
    from PIL import Image
    if image.mode in ('I', 'I;16', 'I;16B', 'I;16L'):  # 16-bit grey PNG
        grey = np.clip(np.asarray(image, dtype='float32') / 65535., 0, 1)
        return np.repeat(grey[..., None], 3, -1) if colour else grey
    if image.mode in ('RGBA', 'LA', 'PA') or 'transparency' in image.info:
        rgba = image.convert('RGBA')
        image = Image.alpha_composite(Image.new('RGBA', rgba.size, 'white'), rgba)
    return np.asarray(image.convert('RGB' if colour else 'L'), dtype='float32') / 255.


# ---------------------------------------------------------------- MNIST's look
def border(pixels):
    """The outermost pixels of pixels [H, W] or [H, W, C], as [n] or [n, C]."""
    return np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])


def to_mnist(grey, invert='auto', size=(SIZE, SIZE)):
    """grey [H, W] in [0, 1] -> (image [size] float32 in [0, 1], light digit on black, as
    MNIST's; whether it was inverted). invert: 'auto' (when the border's median is lighter
    than mid-grey), 'yes' or 'no'. size: the model's (height, width). The steps: module
    docstring."""
    inverted = invert == 'yes' or (invert == 'auto' and np.median(border(grey)) > 0.5)
    x = 1. - grey if inverted else grey
    x = x - np.median(border(x))  # the paper (or the scanner's black) becomes 0
    peak = x.max()
    if not peak > 0:  # a blank image: nothing to centre
        return np.zeros(size, 'float32'), inverted
    x = np.clip(x / peak, 0, 1)
    rows, cols = np.nonzero(x > CONTENT)
    digit = x[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    return centred(resized(digit, BOX / float(max(digit.shape))), size), inverted


def resized(pixels, factor):
    """pixels [h, w] or [h, w, C] scaled by factor (Lanczos, clipped to [0, 1]; at least one
    pixel a side); unchanged when that keeps its size."""
    from PIL import Image
    h, w = pixels.shape[:2]
    size = (max(1, int(round(w * factor))), max(1, int(round(h * factor))))  # PIL: (w, h)
    if size == (w, h):
        return pixels
    planes = pixels[..., None] if pixels.ndim == 2 else pixels
    out = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(planes[..., c], 'float32'))
                               .resize(size, Image.LANCZOS), dtype='float32')
                    for c in range(planes.shape[2])], -1)
    return np.clip(out if pixels.ndim == 3 else out[..., 0], 0, 1)


def centred(digit, size=(SIZE, SIZE)):
    """digit [h, w] (h, w within size) placed in a black image of size (height, width) with
    its centre of mass at the centre, moved only as far as keeps it whole."""
    h, w = digit.shape
    ys, xs = np.mgrid[:h, :w]
    mass = digit.sum()
    cy, cx = (ys * digit).sum() / mass, (xs * digit).sum() / mass
    # pixel (14, 14) in 28x28, not the geometric centre 13.5: with it 407 of MNIST's first
    # 500 test digits come out of to_mnist pixel for pixel as they are (with 13.5: 99)
    top = int(np.clip(round(size[0] / 2. - cy), 0, size[0] - h))
    left = int(np.clip(round(size[1] / 2. - cx), 0, size[1] - w))
    out = np.zeros(size, 'float32')
    out[top:top + h, left:left + w] = digit
    return out


# ---------------------------------------------------------------- other images
def fitted(pixels, size):
    """pixels [H, W] or [H, W, C] scaled, keeping the aspect ratio, to fit in size (height,
    width), centred, the rest filled with the border's median (per channel)."""
    h, w = pixels.shape[:2]
    x = resized(pixels, min(size[0] / float(h), size[1] / float(w)))
    x = x[:size[0], :size[1]]  # rounding may give one pixel too many
    out = np.empty(tuple(size) + pixels.shape[2:], 'float32')
    out[...] = np.median(border(pixels), axis=0)
    top, left = (size[0] - x.shape[0]) // 2, (size[1] - x.shape[1]) // 2
    out[top:top + x.shape[0], left:left + x.shape[1]] = x
    return out


def centre_crop(pixels, size):
    """The centre (height, width) = size of pixels [H, W, ...]."""
    top, left = (pixels.shape[0] - size[0]) // 2, (pixels.shape[1] - size[1]) // 2
    return pixels[top:top + size[0], left:left + size[1]]


def prepare(pixels, card, invert='auto'):
    """pixels (read_pixels: [H, W, 3] for a 3-channel model, else [H, W]) -> (x [h, w, c] as
    the model of card (modelcard.Card) takes it, whether it was inverted). The steps: module
    docstring."""
    h, w, channels = card.input_shape
    if card.dataset in DIGIT_SETS and channels == 1:
        x, inverted = to_mnist(pixels, invert, (h, w))
        return x[..., None], inverted
    inverted = invert == 'yes'
    x = 1. - pixels if inverted else pixels
    source = CROPPED_FROM.get(card.dataset, (h, w))
    source = (max(source[0], h), max(source[1], w))  # an --input_shape larger than the crops
    x = centre_crop(fitted(x, source), (h, w))
    return (x if x.ndim == 3 else x[..., None]), inverted


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


def report_line(path, lengths, inverted, names=None):
    """'<path>: <class>  (capsule lengths: <class>: <len>, <second>: <len>[; inverted])'
    for capsule lengths [n_class]; classes by their names when given."""
    first, second = np.argsort(-lengths)[:2]
    name = (lambda i: names[i]) if names else str
    return '%s: %s  (capsule lengths: %s: %.3f, %s: %.3f%s)' % (
        path, name(first), name(first), lengths[first], name(second), lengths[second],
        '; inverted' if inverted else '')


def check_channels(card):
    """UserError unless card's model takes 1 or 3 channels (images can give no other)."""
    if card.input_shape[2] not in (1, 3):
        raise UserError('the model takes %d-channel images%s; predict.py reads 1 (grey) or 3 '
                        '(RGB) channels' % (card.input_shape[2], ' (from %s)' % card.source
                                            if card.source else ''))


def predict(inputs, weights=None, card=None, invert='auto', recon_dir=None):
    """Classifies the images named by inputs with the weights file (default: the shipped
    file of card.model) of the model card (modelcard.Card; default MNIST's CapsNet) describes;
    returns (the printed lines, one per image, the predicted classes [N], lengths [N, n_class])."""
    card = card or modelcard.MNIST
    check_channels(card)
    paths = image_paths(inputs)
    colour = card.input_shape[2] == 3
    prepared = [prepare(read_pixels(p, colour), card, invert) for p in paths]  # all checked
    x = np.stack([image for image, _ in prepared])  # [N, H, W, C]
    weights = weights or os.path.join(ROOT, 'pretrained', SHIPPED[card.model])
    eval_model = export_model.load_card(card, weights)
    lengths, recons = evaluation.predict(eval_model, 'capsule', x, batch_size=100, quiet=True)
    lengths = np.asarray(lengths)
    if recon_dir:
        os.makedirs(recon_dir, exist_ok=True)
    lines, used = [], set()
    for i, path in enumerate(paths):
        lines.append(report_line(path, lengths[i], prepared[i][1], card.class_names))
        print(lines[-1])
        if recon_dir:
            pair = np.concatenate([x[i], np.asarray(recons[0][i])], axis=1)  # [H, 2W, C]
            utils.save_image(pair[..., 0] if pair.shape[-1] == 1 else pair,
                             os.path.join(recon_dir, recon_name(path, used)))
    return lines, lengths.argmax(1), lengths


def main(argv=None):
    p = capsulenet.OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument('images', nargs='+', metavar='IMAGE_OR_FOLDER',
                   help='PNG / JPEG files, or folders of them')
    p.add_argument('-w', '--weights', default=None,
                   help='weights file (.h5) (default: the file of --model in pretrained/: %s)'
                        % ', '.join('%s %s' % kv for kv in sorted(SHIPPED.items())))
    modelcard.add_flags(p, sorted(k for k, s in capsulenet.MODELS.items()
                                  if s.kind == 'capsule'), sorted(datasets.DATASETS))
    p.add_argument('--invert', default='auto', choices=['auto', 'yes', 'no'],
                   help='invert the images (1 - pixel): auto: for a digit model (MNIST), when '
                        "the image's border is lighter than mid-grey (dark on light)")
    p.add_argument('--recon_dir', default=None,
                   help='write <name>_recon.png here per image: input as seen, reconstruction')
    args = p.parse_args(argv)

    def body():
        if args.weights is None:
            args.weights = os.path.join(ROOT, 'pretrained', SHIPPED[args.model or 'capsnet'])
        card = export_model.check_card(modelcard.from_args(args))
        check_channels(card)
        C.configure_threads()
        predict(args.images, args.weights, card, args.invert, args.recon_dir)
    return run_cli(body)


if __name__ == '__main__':
    sys.exit(main())
