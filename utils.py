"""Data loading, augmentation and plots for the CapsNet CLI.

    python utils.py plot result/log.csv [more.csv ...] [--out result/log.png]
    python utils.py table CSV_data/*.csv       # final test errors beside the paper's Table 1
    python utils.py perturb -w result/trained_model.h5 [--model efficient] [--index 3]
"""
import argparse
import gzip
import os
import struct
import sys
import zlib

import numpy as np

from compat import UserError

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MNIST_DIR = os.path.join(HERE, 'data', 'mnist')

# idx magic numbers: 0x0000 + type code 0x08 (ubyte) + number of dims
IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}
MNIST_FILES = {
    'train_images': ('train-images-idx3-ubyte', 'train-images.idx3-ubyte'),
    'train_labels': ('train-labels-idx1-ubyte', 'train-labels.idx1-ubyte'),
    'test_images': ('t10k-images-idx3-ubyte', 't10k-images.idx3-ubyte'),
    'test_labels': ('t10k-labels-idx1-ubyte', 't10k-labels.idx1-ubyte'),
}


# ---------------------------------------------------------------- MNIST
def _find_idx(data_dir, names):
    for name in names:
        for suffix in ('.gz', ''):
            path = os.path.join(data_dir, name + suffix)
            if os.path.isfile(path):
                return path
    return None


def _read_upto(f, limit, chunk=1 << 20):
    """At most `limit` bytes from the open file f, read in chunks: a header's claim of a huge
    size (or a gzip bomb) never allocates or inflates more than the data really there + 1."""
    parts, left = [], limit
    while left > 0:
        part = f.read(min(chunk, left))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b''.join(parts)


def _read_idx_bytes(path, ndim):
    """(header bytes, dims, data bytes) of an idx file, the data cut at the size the header
    declares + 1 byte (enough to tell trailing data). Sizes are Python ints: dims up to
    2^32 - 1 each cannot wrap around."""
    opener = gzip.open if path.endswith('.gz') else open
    try:
        with opener(path, 'rb') as f:
            header = _read_upto(f, 4 + 4 * ndim)
            if len(header) < 4 + 4 * ndim:
                raise UserError('%s is empty or truncated (%d bytes)' % (path, len(header)))
            magic = struct.unpack('>I', header[:4])[0]
            if magic != IDX_MAGIC[ndim]:
                raise UserError('%s: wrong idx magic number 0x%08x (expected 0x%08x for %d-D '
                                'ubyte data)' % (path, magic, IDX_MAGIC[ndim], ndim))
            dims = struct.unpack('>%dI' % ndim, header[4:])
            size = 1
            for d in dims:
                size *= int(d)
            return header, dims, size, _read_upto(f, size + 1)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise UserError('cannot read %s: %s (corrupt or truncated gzip?)' % (path, e))


def read_idx(path, ndim):
    """Reads one idx file (gzipped or raw) with idx2numpy after checking its header.

    ndim 3: images [N, rows, cols] uint8; ndim 1: labels [N] uint8.
    """
    import idx2numpy
    header, dims, size, data = _read_idx_bytes(path, ndim)
    if len(data) != size:
        raise UserError('%s is truncated or has trailing data: header says %s (%d bytes), file '
                        'has %s' % (path, 'x'.join(map(str, dims)), len(header) + size,
                                    len(header) + len(data) if len(data) < size else 'more'))
    return idx2numpy.convert_from_string(header + data)


def _mnist_from_keras():
    """Fallback when no idx files are on disk: keras's downloader (needs the network)."""
    from compat import keras
    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    except Exception as e:  # network errors come in many types
        raise UserError('no MNIST idx files found and the download failed (%s); '
                        'put the four idx files in data/mnist/ or pass --data_dir' % e)
    return x_train, y_train, x_test, y_test


def load_mnist(data_dir=None, image_size=28):
    """MNIST as ((x_train, y_train), (x_test, y_test)).

    x: float32 [N, 28, 28, 1] in [0, 1]; y: one-hot float32 [N, 10]. Reads the idx files
    (gzipped or raw, both naming styles) in data_dir (default data/mnist/ in the repo);
    falls back to keras.datasets.mnist when that folder holds none of them.
    """
    directory = data_dir or DEFAULT_MNIST_DIR
    paths = {k: _find_idx(directory, v) for k, v in MNIST_FILES.items()}
    if not any(paths.values()) and data_dir is None:
        arrays = _mnist_from_keras()
    else:
        missing = [MNIST_FILES[k][0] for k, p in paths.items() if p is None]
        if missing:
            raise UserError('MNIST files missing in %s: %s' % (directory, ', '.join(missing)))
        arrays = (read_idx(paths['train_images'], 3), read_idx(paths['train_labels'], 1),
                  read_idx(paths['test_images'], 3), read_idx(paths['test_labels'], 1))
    x_train, y_train, x_test, y_test = arrays
    return (_prepare(x_train, y_train, 'train', image_size),
            _prepare(x_test, y_test, 'test', image_size))


def _prepare(images, labels, split, image_size):
    if images.ndim != 3 or images.shape[1:] != (image_size, image_size):
        raise UserError('MNIST %s images have shape %s, expected [N, %d, %d]'
                        % (split, images.shape, image_size, image_size))
    if len(images) == 0:
        raise UserError('MNIST %s images: the file holds 0 images' % split)
    if len(images) != len(labels):
        raise UserError('MNIST %s: %d images but %d labels' % (split, len(images), len(labels)))
    if labels.size and labels.max() > 9:
        raise UserError('MNIST %s labels go up to %d, expected 0..9' % (split, labels.max()))
    x = images.reshape(-1, image_size, image_size, 1).astype('float32') / 255.
    return x, to_categorical(labels, 10)


def to_categorical(labels, n_class):
    """Integer labels [N] -> one-hot float32 [N, n_class]."""
    return np.eye(n_class, dtype='float32')[np.asarray(labels, dtype='int64')]


# ---------------------------------------------------------------- augmentation
def random_shift(images, max_shift, rng):
    """Shifts each image by a random integer offset in [-max_shift, max_shift]^2, zero fill.

    images: [batch, H, W, C] -> same shape (the paper's "shifted by up to 2 pixels").
    """
    if max_shift <= 0:
        return images
    n, h, w = images.shape[:3]
    padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
    dy, dx = rng.randint(0, 2 * max_shift + 1, size=(2, n))
    out = np.empty_like(images)
    for i in range(n):
        out[i] = padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    return out


# ---------------------------------------------------------------- plots
def combine_images(generated_images, height=None, width=None):
    """Tiles images [N, H, W] or [N, H, W, 1] into one [rows*H, cols*W] array."""
    images = np.asarray(generated_images)
    if images.ndim == 4:
        images = images[..., 0]
    num = images.shape[0]
    if width is None and height is None:
        width = int(np.ceil(np.sqrt(num)))
        height = int(np.ceil(float(num) / width))
    elif width is None:
        width = int(np.ceil(float(num) / height))
    elif height is None:
        height = int(np.ceil(float(num) / width))
    h, w = images.shape[1:3]
    grid = np.zeros((height * h, width * w), dtype=images.dtype)
    for index, img in enumerate(images):
        i, j = divmod(index, width)
        grid[i * h:(i + 1) * h, j * w:(j + 1) * w] = img
    return grid


def save_image(array, path):
    """Saves a 2-D array in [0, 1] as a grayscale PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    plt.imsave(path, np.clip(array, 0, 1), cmap='gray', vmin=0, vmax=1)


def _metric_columns(frame):
    loss = [c for c in frame.columns if c.endswith('loss')]
    acc = [c for c in frame.columns if c.endswith('acc') or c.endswith('accuracy')]
    return loss, acc


def read_logs(csv_paths):
    """[(name, DataFrame)] for Keras CSVLogger files; name is the file name without .csv."""
    import pandas as pd
    if isinstance(csv_paths, str):
        csv_paths = [csv_paths]
    frames = []
    for path in csv_paths:
        try:
            frame = pd.read_csv(path)
        except (OSError, ValueError) as e:
            raise UserError('cannot read training log %s: %s' % (path, e))
        if 'epoch' not in frame.columns or frame.empty:
            raise UserError('%s is not a Keras CSVLogger file with rows (no epoch column)' % path)
        frames.append((os.path.splitext(os.path.basename(path))[0], frame))
    return frames


def _test_accuracy_column(frame):
    _, accs = _metric_columns(frame)
    return ([c for c in accs if c.startswith('val_')] or accs or [None])[0]


def plot_log(csv_paths, out_path=None, show=False):
    """Plots the curves of one or several Keras CSVLogger files.

    One file: every loss column and every accuracy column against epoch. Several files
    (a comparison): each file's test error (100 - validation accuracy, %, log scale) and its
    training loss, labelled by file name.
    """
    import matplotlib
    if not show:
        matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    frames = read_logs(csv_paths)
    fig, (ax_loss, ax_acc) = plt.subplots(2, 1, figsize=(7, 8))
    for label, frame in frames:
        epochs = frame['epoch'] + 1
        losses, accs = _metric_columns(frame)
        if len(frames) == 1:
            for col in losses:
                ax_loss.plot(epochs, frame[col], label=col)
            for col in accs:
                ax_acc.plot(epochs, frame[col], label=col)
            continue
        if 'loss' in frame.columns:
            ax_loss.plot(epochs, frame['loss'], marker='.', label=label)
        col = _test_accuracy_column(frame)
        if col:
            ax_acc.plot(epochs, 100 * (1 - frame[col]), marker='.', label=label)
    ax_loss.set_title('Training loss' if len(frames) > 1 else 'Loss')
    ax_acc.set_title('Test error (%)' if len(frames) > 1 else 'Accuracy')
    if len(frames) > 1:
        ax_acc.set_yscale('log')
        ax_loss.set_yscale('log')
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel('epoch')
        ax.legend(fontsize='small')
    fig.tight_layout()
    if out_path:
        fig.savefig(out_path)
    if show:
        plt.show()
    plt.close(fig)


# Sabour et al. 2017, Table 1: MNIST test error % (mean ± std of 3 trials), by log name
PAPER_TABLE1 = {
    'capsnet_r1_norecon': ('CapsNet, routing 1, no reconstruction', '0.34 ± 0.032'),
    'capsnet_r1_recon': ('CapsNet, routing 1, reconstruction', '0.29 ± 0.011'),
    'capsnet_r2_recon': ('CapsNet, routing 2, reconstruction', '–'),
    'capsnet_r3_norecon': ('CapsNet, routing 3, no reconstruction', '0.35 ± 0.036'),
    'capsnet_r3_recon': ('CapsNet, routing 3, reconstruction', '0.25 ± 0.005'),
}


def results_table(csv_paths):
    """Markdown table: configuration | paper test error | ours | epochs, from CSV logs.

    'ours' is 100 - the last epoch's validation accuracy (the CLI validates on the test
    set), so each number is traceable to its CSV. Logs named <config>_<anything>.csv match
    the Table 1 configuration <config>; other names are listed with the paper column '–'.
    """
    lines = ['| configuration | paper test error % | ours % | epochs | log |',
             '|---|---|---|---|---|']
    for name, frame in read_logs(csv_paths):
        key = next((k for k in sorted(PAPER_TABLE1, key=len, reverse=True)
                    if name == k or name.startswith(k + '_')), None)
        config, paper = PAPER_TABLE1.get(key, (name, '–'))
        col = _test_accuracy_column(frame)
        ours = '%.2f' % (100 * (1 - frame[col].iloc[-1])) if col else '–'
        lines.append('| %s | %s | %s | %d | %s.csv |' % (config, paper, ours, len(frame), name))
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description='Plots for CapsNet training logs.')
    sub = parser.add_subparsers(dest='command')
    plot = sub.add_parser('plot', help='plot one or several Keras CSVLogger log files')
    plot.add_argument('csv', nargs='+', help='log.csv files (Keras CSVLogger format)')
    plot.add_argument('--out', default='result/log.png', help='PNG file to write')
    table = sub.add_parser('table', help="markdown table of final test errors beside the "
                                         "paper's Table 1, from CSV logs")
    table.add_argument('csv', nargs='+', help='log files named <config>[_suffix].csv, e.g. '
                                              'capsnet_r3_recon_50ep.csv')
    add_perturb_parser(sub)
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != 'perturb':
        parser.error('unrecognized arguments: %s' % ' '.join(extra))
    try:
        if args.command == 'perturb':
            return perturb_command(args, extra)
        if args.command == 'plot':
            plot_log(args.csv, args.out)
            print('wrote %s' % args.out)
        elif args.command == 'table':
            print(results_table(args.csv))
        else:
            parser.print_help()
            return 2
    except UserError as e:
        print('error: %s' % e, file=sys.stderr)
        return 2
    return 0


# ---------------------------------------------------------------- Efficient-CapsNet augmentation
def _shift_zero_fill(image, dy, dx):
    """image [H, W, C] moved down dy and right dx pixels (negative: up / left), zero fill."""
    h, w = image.shape[:2]
    out = np.zeros_like(image)
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        image[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def _free_margins(image):
    """(top, bottom, left, right) empty rows/columns around the non-zero pixels of [H, W, C]."""
    rows = np.where(image.max(axis=(1, 2)) > 0)[0]
    cols = np.where(image.max(axis=(0, 2)) > 0)[0]
    if len(rows) == 0:
        return 0, 0, 0, 0
    h, w = image.shape[:2]
    return rows[0], h - 1 - rows[-1], cols[0], w - 1 - cols[-1]


def _squeeze_width(image, pixels):
    """image [H, W, C] resized to width W - pixels (linear), centred, zero padded to W."""
    from scipy import ndimage
    if pixels <= 0:
        return image
    h, w, c = image.shape
    narrow = ndimage.zoom(image, (1, (w - pixels) / float(w), 1), order=1)[:, :w]
    out = np.zeros_like(image)
    left = (w - narrow.shape[1]) // 2
    out[:, left:left + narrow.shape[1]] = narrow
    return out


def efficient_augment(images, rng, max_angle=30., max_squeeze=7, erase_size=4):
    """Efficient-CapsNet's MNIST augmentation with NumPy/SciPy, in the reference's order.

    images: [batch, H, W, C] in [0, 1] -> same shape. Per image: (1) about half the time a
    rotation by max_angle * clip(N(0, 0.33), -1, 1) degrees; (2) a random integer shift that
    keeps the digit inside the frame (bounded by its empty margins); (3) a horizontal
    squeeze by 0..max_squeeze pixels, re-centred; (4) a random erase_size^2 patch set to 0.
    Linear interpolation replaces the reference's OpenCV / Lanczos resampling.
    """
    from scipy import ndimage
    out = np.empty_like(images)
    h, w = images.shape[1:3]
    for i, image in enumerate(images):
        if rng.rand() < 0.5:
            angle = max_angle * np.clip(rng.normal(0, 0.33), -1, 1)
            image = ndimage.rotate(image, angle, axes=(1, 0), reshape=False, order=1,
                                   mode='constant', cval=0.)
        top, bottom, left, right = _free_margins(image)
        image = _shift_zero_fill(image, rng.randint(-top, bottom + 1),
                                 rng.randint(-left, right + 1))
        image = _squeeze_width(image, rng.randint(0, max_squeeze + 1))
        y0, x0 = rng.randint(0, h - erase_size + 1), rng.randint(0, w - erase_size + 1)
        image = image.copy()
        image[y0:y0 + erase_size, x0:x0 + erase_size] = 0
        out[i] = np.clip(image, 0, 1)
    return out


# ---------------------------------------------------------------- perturbation viewer
class PerturbationViewer(object):
    """Interactive figure: move the 16 dimensions of the winning capsule, watch the decoder.

    eval_model: image [batch, H, W, C] -> [lengths [batch, n_class], reconstruction];
    manipulate_model: [image, one-hot y [batch, n_class], noise [batch, n_class, dim]]
    -> reconstruction [batch, H, W, C] (the models capsulenet's builders return).
    images: [N, H, W, C] to choose from. Shows the input, the live reconstruction and the
    capsule lengths as bars; one slider per capsule dimension (+-value_range, step), an
    image-index slider and a Reset button. Works with any matplotlib backend (Agg in tests,
    %matplotlib widget in notebooks).
    """

    def __init__(self, eval_model, manipulate_model, images, index=0, value_range=0.30,
                 step=0.05):
        import compat as C
        import matplotlib.pyplot as plt
        from matplotlib.widgets import Button, Slider
        self.eval_model, self.manipulate_model = eval_model, manipulate_model
        self.images = np.asarray(images, dtype='float32')
        if not len(self.images):
            raise UserError('no images to show in the perturbation viewer')
        self.n_class, self.dim = [int(d) for d in C.int_shape(manipulate_model.inputs[2])[1:]]
        self._muted = False
        self.figure = plt.figure(figsize=(11, 8))
        self.ax_input = self.figure.add_axes([0.03, 0.55, 0.28, 0.4])
        self.ax_recon = self.figure.add_axes([0.35, 0.55, 0.28, 0.4])
        self.ax_bars = self.figure.add_axes([0.70, 0.58, 0.27, 0.35])
        self.sliders = []
        for d in range(self.dim):
            column, row = divmod(d, (self.dim + 1) // 2)
            ax = self.figure.add_axes([0.08 + 0.48 * column, 0.46 - 0.045 * row, 0.35, 0.03])
            slider = Slider(ax, 'dim %d' % d, -value_range, value_range, valinit=0.,
                            valstep=step)
            slider.on_changed(self.update)
            self.sliders.append(slider)
        ax_index = self.figure.add_axes([0.08, 0.04, 0.55, 0.03])
        self.index_slider = Slider(ax_index, 'image', 0, len(self.images) - 1,
                                   valinit=int(index), valstep=1, valfmt='%d')
        self.index_slider.on_changed(lambda value: self.select(int(value)))
        self.reset_button = Button(self.figure.add_axes([0.78, 0.03, 0.12, 0.05]), 'Reset')
        self.reset_button.on_clicked(self.reset)
        self.input_image = self.recon_image = self.bars = None
        self.select(int(index))

    def _show(self, ax, image, current):
        image = image[..., 0] if image.shape[-1] == 1 else image
        if current is None:
            current = ax.imshow(image, cmap='gray', vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            current.set_data(image)
        return current

    def select(self, index):
        """Shows image `index`: its class is the longest capsule; sliders back to 0."""
        if not 0 <= index < len(self.images):
            raise UserError('image index %d out of range 0..%d' % (index, len(self.images) - 1))
        self.index = index
        self.x = self.images[index:index + 1]
        lengths = np.asarray(self.eval_model.predict(self.x, verbose=0)[0])[0]
        self.label = int(np.argmax(lengths))
        self.y = np.eye(self.n_class, dtype='float32')[[self.label]]
        self.input_image = self._show(self.ax_input, self.x[0], self.input_image)
        self.ax_input.set_title('input #%d' % index)
        self.ax_bars.clear()
        self.bars = self.ax_bars.bar(range(self.n_class), lengths, color='gray')
        self.bars[self.label].set_color('tab:red')
        self.ax_bars.set_ylim(0, 1)
        self.ax_bars.set_xticks(range(self.n_class))
        self.ax_bars.set_title('capsule lengths (class %d)' % self.label)
        self.reset()

    def noise(self):
        """Slider values on the winning capsule's row: [1, n_class, dim]."""
        noise = np.zeros((1, self.n_class, self.dim), dtype='float32')
        noise[0, self.label] = [round(s.val, 6) for s in self.sliders]  # snapping leaves 1e-17
        return noise

    def reconstruction(self):
        """Decoder output for the current image and slider values: [H, W, C]."""
        return np.asarray(self.manipulate_model.predict([self.x, self.y, self.noise()],
                                                        verbose=0))[0]

    def update(self, _value=None):
        if self._muted:
            return
        self.recon_image = self._show(self.ax_recon, self.reconstruction(), self.recon_image)
        self.ax_recon.set_title('reconstruction')
        self.figure.canvas.draw_idle()

    def reset(self, _event=None):
        """All dimension sliders back to 0, then one redraw."""
        self._muted = True
        try:
            for slider in self.sliders:
                slider.reset()
        finally:
            self._muted = False
        self.update()


def build_viewer(weights, model='capsnet', index=0, data_dir=None, test_samples=100,
                 model_args=()):
    """PerturbationViewer on the first test_samples MNIST test images for a trained model.

    weights: .h5 from capsulenet.py; model: a capsulenet.MODELS name; model_args: further
    capsulenet.py flags (e.g. ['--conv1_filters', '64']) so the architecture matches.
    """
    import capsulenet  # here, not at the top: capsulenet imports this module
    cli = capsulenet.build_parser().parse_args(['--model', model] + list(model_args))
    x_test = load_mnist(data_dir)[1][0][:test_samples]
    train_model, eval_model, manipulate_model = capsulenet.MODELS[model](
        cli, x_test.shape[1:], 10)
    import compat as C
    C.load_weights_h5(train_model, weights)
    return PerturbationViewer(eval_model, manipulate_model, x_test, index=index)


def add_perturb_parser(sub):
    perturb = sub.add_parser(
        'perturb', help='interactive capsule-dimension perturbation viewer (matplotlib); '
                        'further capsulenet.py architecture flags are passed through')
    perturb.add_argument('-w', '--weights', required=True, help='trained weights .h5')
    perturb.add_argument('--model', default='capsnet', choices=['capsnet', 'efficient'],
                         help='architecture the weights belong to')
    perturb.add_argument('--index', default=0, type=int, help='first test image shown')
    perturb.add_argument('--test_samples', default=100, type=int,
                         help='how many MNIST test images the chooser offers')
    perturb.add_argument('--data_dir', default=None, help='folder with the MNIST idx files')
    perturb.add_argument('--out', default=None,
                         help='save the figure to this PNG instead of opening a window')


def perturb_command(args, model_args):
    if not 0 <= args.index < args.test_samples:
        raise UserError('--index %d must be in 0..%d (--test_samples %d)'
                        % (args.index, args.test_samples - 1, args.test_samples))
    import matplotlib
    if args.out:
        matplotlib.use('Agg')
    viewer = build_viewer(args.weights, args.model, args.index, args.data_dir,
                          args.test_samples, model_args)
    import matplotlib.pyplot as plt
    if args.out:
        viewer.figure.savefig(args.out)
        print('wrote %s' % args.out)
    else:
        plt.show()
    return 0


if __name__ == '__main__':
    sys.exit(main())
