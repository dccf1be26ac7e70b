"""Data loading, augmentation, image grids and training-log plots; no Keras.

    python utils.py plot result/log.csv [more.csv ...] [--out result/log.png]  # several:
                                       # test error per epoch, log scale, one line per config
    python utils.py table CSV_data/*.csv   # the paper's Table 1 beside ours: last epoch,
                                           # last-5 mean ± std, epochs, best (test-selected)
The perturbation viewer is its own command: python viewer.py -w result/trained_model.h5
"""
if __name__ == '__main__':  # before the imports below, which take seconds (TensorFlow)
    import safeio
    safeio.interrupt_is_one_line()

import functools
import gzip
import os
import struct
import sys
import zlib

import numpy as np

from paper import TABLE1, TABLE1_CNN
from safeio import OneLineParser, UserError, atomic_write, run_cli

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


def available_memory():
    """Bytes of memory a new allocation may take now: Linux's MemAvailable, else the physical
    memory; None when neither can be read (then no size is refused)."""
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    except (AttributeError, ValueError, OSError):
        return None


def size_text(n_bytes):
    """'1.5 GiB' or '64 MiB' for a byte count."""
    if n_bytes >= 2 ** 30:
        return '%.1f GiB' % (n_bytes / 2. ** 30)
    return '%d MiB' % round(n_bytes / 2. ** 20)


# ---------------------------------------------------------------- MNIST
def _find_idx(data_dir, names):
    for name in names:
        for suffix in ('.gz', ''):
            path = os.path.join(data_dir, name + suffix)
            if os.path.isfile(path):
                return path
    return None


def read_upto(f, limit, chunk=1 << 20):
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
            header = read_upto(f, 4 + 4 * ndim)
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
            return header, dims, size, read_upto(f, size + 1)
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


def load_mnist(data_dir=None, image_size=28, train_samples=None, test_samples=None):
    """MNIST as ((x_train, y_train), (x_test, y_test)).

    x: float32 [N, 28, 28, 1] in [0, 1]; y: one-hot float32 [N, 10]. Reads the idx files
    (gzipped or raw, both naming styles) in data_dir (default data/mnist/ in the repo);
    falls back to keras.datasets.mnist when that folder holds none of them.
    train_samples / test_samples: only the first N of each split are converted (the same
    values as slicing afterwards; the whole files are still read and checked).
    """
    x_train, y_train, x_test, y_test = _mnist_arrays(data_dir)
    return (_prepare(x_train, y_train, 'train', image_size, train_samples),
            _prepare(x_test, y_test, 'test', image_size, test_samples))


def _mnist_arrays(data_dir):
    """The four uint8 arrays (train images [N, H, W], labels [N], test images, labels)."""
    directory = data_dir or DEFAULT_MNIST_DIR
    paths = {k: _find_idx(directory, v) for k, v in MNIST_FILES.items()}
    if not any(paths.values()) and data_dir is None:
        return _mnist_from_keras()
    missing = [MNIST_FILES[k][0] for k, p in paths.items() if p is None]
    if missing:
        raise UserError('MNIST files missing in %s: %s' % (directory, ', '.join(missing)))
    order = ('train_images', 'train_labels', 'test_images', 'test_labels')
    files = tuple((paths[k], 3 if k.endswith('images') else 1) for k in order)
    return _read_idx_files(files, tuple(_stamp(p) for p, _ in files))


def _stamp(path):
    """(size, mtime in ns) of path: a file rewritten since it was read is read again."""
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=2)
def _read_idx_files(files, stamps):
    """read_idx of each (path, ndim), kept for the next call with the same files and stamps:
    a notebook, the viewer and the tests load MNIST many times in one process (~0.3 s of
    gunzip each). The arrays are never handed out: _prepare converts copies."""
    return tuple(read_idx(path, ndim) for path, ndim in files)


def _prepare(images, labels, split, image_size, limit=None):
    """Checks one split's uint8 arrays; -> (x [n, size, size, 1] float32 in [0, 1],
    y one-hot [n, 10]) of its first `limit` images (all when None)."""
    if images.ndim != 3 or images.shape[1:] != (image_size, image_size):
        raise UserError('MNIST %s images have shape %s, expected [N, %d, %d]'
                        % (split, images.shape, image_size, image_size))
    if len(images) == 0:
        raise UserError('MNIST %s images: the file holds 0 images' % split)
    if len(images) != len(labels):
        raise UserError('MNIST %s: %d images but %d labels' % (split, len(images), len(labels)))
    if labels.size and labels.max() > 9:
        raise UserError('MNIST %s labels go up to %d, expected 0..9' % (split, labels.max()))
    # converting only what is used: 60,000 images in float32 are 188 MB and ~0.5 s
    images, labels = images[:limit], labels[:limit]
    x = images.reshape(-1, image_size, image_size, 1).astype('float32')
    x /= 255.  # in place: the same float32 division as x / 255.
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
    """Tiles images [N, H, W] or [N, H, W, C] into one [rows*H, cols*W] array (the first
    channel) or, for RGB images [N, H, W, 3], one [rows*H, cols*W, 3] array."""
    images = np.asarray(generated_images)
    if images.ndim == 4 and images.shape[3] != 3:
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
    grid = np.zeros((height * h, width * w) + images.shape[3:], dtype=images.dtype)
    for index, img in enumerate(images):
        i, j = divmod(index, width)
        grid[i * h:(i + 1) * h, j * w:(j + 1) * w] = img
    return grid


def for_display(images):
    """images [N, ...] as they are when within [0, 1], else each scaled to [0, 1] by its own
    min and max (standardised smallNORB inputs)."""
    images = np.asarray(images, dtype='float32')
    if images.size == 0 or (images.min() >= 0 and images.max() <= 1):
        return images
    axes = tuple(range(1, images.ndim))
    low, high = images.min(axis=axes, keepdims=True), images.max(axis=axes, keepdims=True)
    return (images - low) / np.maximum(high - low, 1e-12)


def two_colour_tiles(images, first, second, dim=0.3):
    """Paper Fig. 5 style pairs: [N, H, W, 1] images and their two reconstructions -> RGB
    tiles [2N, H, W, 3]: each image in grey, then its reconstructions over it dimmed to `dim`,
    the first in red and the second in green (where they overlap: yellow)."""
    grey = np.repeat(np.clip(images, 0, 1), 3, axis=-1)
    colour = dim * grey
    colour[..., 0] = np.maximum(colour[..., 0], np.clip(first[..., 0], 0, 1))
    colour[..., 1] = np.maximum(colour[..., 1], np.clip(second[..., 0], 0, 1))
    return np.stack([grey, colour], axis=1).reshape((-1,) + grey.shape[1:])


def save_image(array, path):
    """Saves a 2-D array in [0, 1] as a grayscale PNG (an RGB array [H, W, 3] in colour),
    atomically (see save_figure)."""
    import matplotlib.image  # not pyplot: no backend is chosen or switched
    with atomic_write(path) as tmp:
        matplotlib.image.imsave(tmp, np.clip(array, 0, 1), cmap='gray', vmin=0, vmax=1)


def save_figure(fig, path):
    """fig saved to path (format from its extension) through a temp file and a rename, so a
    kill or a full disk leaves no half-written figure; UserError naming path on failure."""
    with atomic_write(path) as tmp:  # the temp name keeps the extension: same format
        try:
            fig.savefig(tmp)
        except ValueError as e:  # an extension matplotlib has no writer for
            raise UserError('cannot write %s: %s' % (path, e))


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
        _check_numeric(frame, path)
        frames.append((os.path.splitext(os.path.basename(path))[0], frame))
    return frames


def _check_numeric(frame, path):
    """UserError naming the first epoch / loss / accuracy column of a log that holds text
    (plots and tables compute with them)."""
    import pandas as pd
    losses, accs = _metric_columns(frame)
    for column in ['epoch'] + losses + accs:
        values = frame[column]
        if not pd.api.types.is_numeric_dtype(values):
            bad = values[pd.to_numeric(values, errors='coerce').isna() & values.notna()]
            raise UserError('%s: column %r holds non-numeric values (%r)'
                            % (path, column, bad.iloc[0] if len(bad) else values.iloc[0]))


def _test_accuracy_column(frame):
    _, accs = _metric_columns(frame)
    return ([c for c in accs if c.startswith('val_')] or accs or [None])[0]


# |values| beyond this are not plotted: no training logs them before its NaN stop, and
# matplotlib's tick maths overflows near 1e308 (a ValueError from np.arange)
PLOT_LIMIT = 1e100


def _plottable(values, low=-PLOT_LIMIT, high=PLOT_LIMIT, positive=False):
    """values as a float array with NaN where they cannot be plotted: not finite, outside
    [low, high], or (positive=True, a log axis) <= 0. Returns (array, number masked)."""
    v = np.asarray(values, dtype='float64')
    with np.errstate(invalid='ignore'):
        bad = ~np.isfinite(v) | (v < low) | (v > high) | ((v <= 0) if positive else False)
    v = v.copy()
    v[bad] = np.nan
    return v, int(bad.sum())


def error_percent(frame, col):
    """100 * (1 - frame[col]) as a float array [epochs], NaN where the accuracy is not a
    finite number in [0, 1] (a NaN epoch, a damaged log)."""
    acc, _ = _plottable(frame[col], 0., 1.)
    return 100. * (1. - acc)


CNN_LABELS = {'cnn': 'baseline CNN', 'cnn_pooled': "CNN of CapsNet's size (pooled)"}


def config_of(name):
    """(Table 1 key or 'cnn' / 'cnn_pooled' or None, label) of a log named after its
    configuration: 'r3_recon', 'capsnet_r3_recon_50ep' -> ('capsnet_r3_recon', 'routing 3,
    reconstruction'); 'r3_recon_seed1' -> (.., 'routing 3, reconstruction, seed 1');
    'cnn...' -> ('cnn', 'baseline CNN'); 'cnn_pooled...' -> ('cnn_pooled', the CapsNet-sized
    CNN of --pools 2 --fc1_units 656, no paper figure); any other name -> (None, name)."""
    bare = name[len('capsnet_'):] if name.startswith('capsnet_') else name
    names = dict(((k[len('capsnet_'):], k) for k in TABLE1), cnn='cnn', cnn_pooled='cnn_pooled')
    short = next((k for k in sorted(names, key=len, reverse=True)
                  if bare == k or bare.startswith(k + '_')), None)
    if short is None:
        return None, name
    key = names[short]
    label = CNN_LABELS[key] if key in CNN_LABELS else TABLE1[key][0].replace('CapsNet, ', '')
    seed = seed_of(bare[len(short):])
    return key, label + (', seed %d' % seed if seed is not None else '')


def _figure(show):
    """A new matplotlib figure with two axes (top, bottom): pyplot's when it is to be shown,
    else a bare Figure, which saves without touching pyplot or its backend."""
    if show:
        import matplotlib.pyplot as plt
        return plt.figure(figsize=(7, 8))
    from matplotlib.figure import Figure
    return Figure(figsize=(7, 8))


def plot_log(csv_paths, out_path=None, show=False):
    """Plots the curves of one or several Keras CSVLogger files; never switches matplotlib's
    backend (show=True uses pyplot's, whatever the caller set).

    One file: every loss column and every accuracy column against epoch. Several files
    (a comparison): each file's test error (100 - validation accuracy, %, log scale) per
    epoch, then its training loss (log scale), labelled by configuration (config_of). Values
    that cannot be plotted (NaN, inf, |v| > PLOT_LIMIT, an accuracy outside [0, 1], <= 0 on a
    log axis) are left out, and the figure says how many.
    """
    frames = read_logs(csv_paths)
    fig = _figure(show)
    ax_top, ax_bottom = fig.subplots(2, 1)
    left_out = 0
    for name, frame in frames:
        epochs, bad = _plottable(frame['epoch'] + 1)
        left_out += bad
        losses, accs = _metric_columns(frame)
        if len(frames) == 1:
            for ax, columns, bounds in ((ax_top, losses, {}), (ax_bottom, accs, (0., 1.))):
                for col in columns:
                    values, bad = _plottable(frame[col], *bounds)
                    left_out += bad
                    ax.plot(epochs, values, label=col)
            continue
        label = config_of(name)[1]
        style = '--' if 'no reconstruction' in label else '-'
        col = _test_accuracy_column(frame)
        if col:
            error, bad = _plottable(error_percent(frame, col), positive=True)
            left_out += bad
            ax_top.plot(epochs, error, marker='.', label=label, linestyle=style)
        if 'loss' in frame.columns:
            loss, bad = _plottable(frame['loss'], positive=True)
            left_out += bad
            ax_bottom.plot(epochs, loss, marker='.', label=label, linestyle=style)
    _decorate(fig, (ax_top, ax_bottom), len(frames) > 1, left_out)
    try:
        if out_path:
            save_figure(fig, out_path)
        if show:
            import matplotlib.pyplot as plt
            plt.show()
    finally:
        if show:
            import matplotlib.pyplot as plt
            plt.close(fig)


def _decorate(fig, axes, comparison, left_out):
    """Titles, log scales with plain tick labels (0.2, 0.5, 1, not 2x10^-1), whole epochs, legends
    and a footnote counting the values left out, for plot_log's two axes."""
    from matplotlib import ticker
    titles = (('Test error (%), log scale', 'Training loss, log scale') if comparison else
              ('Loss', 'Accuracy'))
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel('epoch')
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        if comparison:
            ax.set_yscale('log')
            low, high = ax.get_ylim()  # under a decade: 1..9 labels, else 1, 2, 5 would show one
            subs = (1., 2., 5.) if high > 10 * low else tuple(range(1, 10))
            ax.yaxis.set_major_locator(ticker.LogLocator(subs=subs))
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: '%g' % v))
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize='small')
        ax.grid(True, which='both', alpha=0.3)
    if left_out:
        fig.text(0.01, 0.005, '%d values not plotted (NaN, inf or out of range)' % left_out,
                 fontsize='small')
    fig.tight_layout(rect=(0, 0.03 if left_out else 0, 1, 1))


LAST_N = 5  # the epochs averaged in results_table's mean ± std


def _summary(frame):
    """(last %, last-5 'mean ± std' %, best '%, epoch k', epochs) of a log's test error, as
    strings; '–' where there is no finite figure (a NaN epoch, no accuracy column)."""
    return _summary_of_errors(_test_errors(frame))


def _test_errors(frame):
    """A log's test error in % [epochs]; all NaN when it has no accuracy column."""
    col = _test_accuracy_column(frame)
    return error_percent(frame, col) if col else np.full(len(frame), np.nan)


def _summary_of_errors(error):
    """_summary of test errors in % [epochs] (NaN: no figure that epoch)."""
    last = '%.2f' % error[-1] if np.isfinite(error[-1]) else '–'
    tail = error[-LAST_N:]
    spread = ('%.2f ± %.2f' % (tail.mean(), tail.std(ddof=1))
              if len(tail) == LAST_N and np.isfinite(tail).all() else '–')
    if np.isfinite(error).any():
        k = int(np.nanargmin(error))
        best = '%.2f (epoch %d)' % (error[k], k + 1)
    else:
        best = '–'
    return last, spread, best, len(error)


def results_table(csv_paths):
    """Markdown table, one row per CSV log: configuration | paper | ours at the last epoch |
    mean ± std of the last 5 epochs | epochs | best epoch | log; test errors in %.

    'Ours' is 100 - the validation accuracy of log.csv, which is the test set for runs
    without --validation_split (the default; a --validation_split run's test figure is in its
    test_results.json). The last epoch is the figure reported; the std is the sample std
    (n - 1) of the last 5 epochs ('–' with fewer); the best epoch was picked by looking at
    the test set, so its column says so. '–': no finite figure (a NaN epoch). Logs are
    matched to Table 1 by name (config_of): r3_recon.csv, capsnet_r3_recon_50ep.csv, cnn.csv;
    other names (cnn_pooled.csv too: not a Table 1 row) get the paper column '–'. A
    configuration logged under several seeds (r3_recon.csv, r3_recon_seed1.csv, ...) gets one
    more row: the mean ± std over its seeds at the last epoch they all reached (_seed_rows).
    """
    lines = ['| configuration | paper test error %% | ours, last epoch %% | last %d epochs, '
             'mean ± std %% | epochs | best epoch %% (selected on the test set) | log |' % LAST_N,
             '|---|---|---|---|---|---|---|']
    rows = []
    for name, frame in read_logs(csv_paths):
        key, label = config_of(name)
        if key in TABLE1:
            config, paper_error = TABLE1[key][0], TABLE1[key][3]
        elif key in CNN_LABELS:
            config = label[:1].upper() + label[1:]
            paper_error = TABLE1_CNN if key == 'cnn' else '–'
        else:
            config, paper_error = name, '–'
        last, spread, best, epochs = _summary(frame)
        lines.append('| %s | %s | %s | %s | %d | %s | %s.csv |'
                     % (config, paper_error, last, spread, epochs, best, name))
        rows.append((name, key, paper_error, frame))
    return '\n'.join(lines + _seed_rows(rows))


def seed_spread(errors):
    """'mean ± std' of test errors in % [seeds], all at one epoch: Table 1's figure (mean and
    sample std, n - 1, over trials; the std to three decimals as the paper prints it). '–'
    with fewer than 2 seeds or a NaN among them."""
    errors = np.asarray(errors, dtype='float64')
    if len(errors) < 2 or not np.isfinite(errors).all():
        return '–'
    return '%.2f ± %.3f' % (errors.mean(), errors.std(ddof=1))


def seed_of(name):
    """The seed a log's name gives ('r3_recon_seed2' -> 2), or None (no _seedN part)."""
    import re
    found = re.search(r'(?:^|_)seed(\d+)(?:_|$)', name)
    return int(found.group(1)) if found else None


def _seed_rows(rows):
    """results_table's extra rows, one per configuration logged under several seeds (at least
    one log named _seedN, no seed twice): the mean ± std of the test error at the last epoch
    all of them reached, the paper's way. rows: [(name, config_of key, paper, DataFrame)]."""
    groups = {}
    for name, key, paper_error, frame in rows:
        if key is not None:
            groups.setdefault(key, []).append((name, paper_error, frame))
    lines = []
    for key, group in groups.items():
        seeds = [seed_of(name) for name, _, _ in group]
        if len(group) < 2 or seeds == [None] * len(seeds) or len(set(seeds)) < len(seeds):
            continue
        epoch = min(len(frame) for _, _, frame in group)
        errors = [_test_errors(frame)[epoch - 1] for _, _, frame in group]
        label = TABLE1[key][0] if key in TABLE1 else CNN_LABELS[key]
        config = label[:1].upper() + label[1:]
        lines.append('| %s: %d seeds at epoch %d, mean ± std | %s | %s | – | %d | – | %s |'
                     % (config, len(group), epoch, group[0][1], seed_spread(errors), epoch,
                        ', '.join(name + '.csv' for name, _, _ in group)))
    return lines


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = OneLineParser(description='Plots for CapsNet training logs.')
    sub = parser.add_subparsers(dest='command')
    plot = sub.add_parser('plot', help='plot one or several Keras CSVLogger log files')
    plot.add_argument('csv', nargs='+', help='log.csv files (Keras CSVLogger format)')
    plot.add_argument('--out', default='result/log.png', help='PNG file to write')
    table = sub.add_parser('table', help="markdown table of final test errors beside the "
                                         "paper's Table 1, from CSV logs")
    table.add_argument('csv', nargs='+', help='log files named <config>[_suffix].csv, e.g. '
                                              'capsnet_r3_recon_50ep.csv')
    if argv[:1] == ['perturb']:  # the viewer's command before it was its own
        parser.error('the perturbation viewer is its own command now: python viewer.py %s'
                     % ' '.join(argv[1:]))
    args = parser.parse_args(argv)

    def body():
        if args.command == 'plot':
            plot_log(args.csv, args.out)
            print('wrote %s' % args.out)
        elif args.command == 'table':
            print(results_table(args.csv))
        else:
            parser.error('choose a command: plot or table (see python utils.py -h)')
    return run_cli(body)


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


def _rotate_about(image, degrees, cy, cx):
    """image [H, W, C] turned by `degrees` counter-clockwise about pixel (cy, cx), bilinear,
    zero fill: OpenCV's getRotationMatrix2D + warpAffine, which the reference calls."""
    from scipy import ndimage
    a, b = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    matrix = np.array([[a, b], [-b, a]])  # output (row, col) -> input (row, col)
    offset = np.array([cy, cx]) - matrix.dot([cy, cx])
    return np.stack([ndimage.affine_transform(image[..., c], matrix, offset, order=1,
                                              mode='constant', cval=0.)
                     for c in range(image.shape[-1])], axis=-1)


def _squeeze_width(image, pixels, offset):
    """image [H, W, C] resized to width W - pixels (Lanczos3, antialiased: the reference's
    tf.image.resize), placed `offset` columns from the left, zero padded to W; pixels >= 1."""
    from PIL import Image
    h, w, c = image.shape
    narrow = np.stack([np.asarray(Image.fromarray(image[..., k].astype(np.float32))
                                  .resize((w - pixels, h), Image.LANCZOS))
                       for k in range(c)], axis=-1)
    out = np.zeros_like(image)
    out[:, offset:offset + w - pixels] = narrow
    return out


def _half_normal(rng, n):
    """n samples of min(|N(0, 0.33)|, 0.9999): the reference's magnitude for shift and squeeze."""
    return np.minimum(np.abs(rng.normal(0, .33, n)), .9999)


def efficient_augment(images, rng, max_angle=30., max_squeeze=7, erase_size=4):
    """Efficient-CapsNet's MNIST augmentation with NumPy/SciPy/PIL, as its reference code samples
    it (EscVM/Efficient-CapsNet utils/pre_process_mnist.py), in its order.

    images: [batch, H, W, C] in [0, 1] -> same shape. Per image:
    (1) rotation, when a N(0, 0.33) draw is <= 0 (half the time), by
        int(max_angle * clip(N(0, 0.33), +-0.9999)) whole degrees about pixel (H/2, W/2);
    (2) a shift on each axis, up or down (left or right) at random, of
        floor(+-m * free margin on that side) pixels, m = min(|N(0, 0.33)|, 0.9999): mostly
        0-2 px, never out of the frame (floor: a shift up / left is at least 1 px);
    (3) a horizontal squeeze by 1 + floor(m * max_squeeze) pixels (1-7, mostly 1-3), placed
        floor(pixels / 2) (+1 half the time) columns from the left;
    (4) an erase_size^2 patch set to 0, its corner in rows and columns 4 .. H-6.
    The result is clipped to [0, 1] (Lanczos rings by a few percent; the reference leaves it).
    """
    out = np.empty_like(images)
    for i, image in enumerate(images):
        h, w = image.shape[:2]
        turn, keep = np.clip(rng.normal(0, .33, 2), -.9999, .9999)
        if keep <= 0:
            image = _rotate_about(image, int(max_angle * turn), h / 2., w / 2.)
        top, bottom, left, right = _free_margins(image)
        down, rightward = rng.rand(2) < 0.5
        mx, my = _half_normal(rng, 2)  # x from the first sample, y from the second, as there
        dy = np.floor(my * (1 + bottom)) if down else np.floor(-my * top)
        dx = np.floor(mx * (1 + right)) if rightward else np.floor(-mx * left)
        image = _shift_zero_fill(image, int(dy), int(dx))
        width, extra = _half_normal(rng, 2)
        pixels = int(np.floor(width * max_squeeze + 1))
        image = _squeeze_width(image, pixels, pixels // 2 + int(np.floor(extra * 2)))
        y0, x0 = (4 + np.floor(rng.rand(2) * (h - 9))).astype(int)
        image[y0:y0 + erase_size, x0:x0 + erase_size] = 0
        out[i] = np.clip(image, 0, 1)
    return out


if __name__ == '__main__':
    sys.exit(main())
