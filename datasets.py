"""The CLI's data sets: one record each (Dataset) in DATASETS = {--dataset name: record}.

A record holds all the CLI knows of a data set: its loader (data_dir, train_samples,
test_samples, **its own flags) -> (train (x, y), test (x, y) or a Split, extra evaluation set
or None), its words in --dataset's help, its flags, its digits per image, its training
batches (batches.py; the augmentation itself sits beside each reader), the form of its
held-out validation images, the networks it builds (the paper's / Efficient-CapsNet's own)
and a paper figure to print. hold_out gives a held-out validation set (--validation_split),
validation_data Keras' validation data. A new data set: its reader module, one record here,
and its flags in capsulenet.build_parser.
"""
import collections

import affnist_loader
import batches
import cifar10
import multimnist
import own_data
import paper
import smallnorb
import svhn
import utils
from safeio import UserError


def mnist(data_dir=None, train_samples=None, test_samples=None):
    """--dataset mnist: (train, test, None), cut to the first train_samples / test_samples
    images; x: [N, 28, 28, 1], y: one-hot [N, 10]. None: no extra evaluation set."""
    return utils.load_mnist(data_dir, train_samples=train_samples,
                            test_samples=test_samples) + (None,)


MULTIMNIST_TEST_SEED = 2017  # fixed: the MultiMNIST test set is the same on every run
MULTIMNIST_PAIRS = 1


# A test set: x [N, H, W, C]; y [N, n_class] (one- or two-hot); masks: the label arrays the
# training model's decoder masks take ([y], or MultiMNIST's [y_1, y_2], one-hot each);
# targets: their reconstruction targets ([x], or MultiMNIST's [digit_1, digit_2] alone).
Split = collections.namedtuple('Split', 'x y masks targets')


def as_split(data):
    """A loader's test set, (x, y) or a Split, as a Split."""
    if isinstance(data, Split):
        return data
    x, y = data
    return Split(x, y, [y], [x])


def multimnist_data(data_dir=None, train_samples=None, test_samples=None,
                    multimnist_pairs=MULTIMNIST_PAIRS):
    """--dataset multimnist (§6): (train, test, None) from the MNIST idx files.

    train: the first train_samples MNIST training digits [N, 28, 28, 1], one-hot [N, 10];
    batches.OverlayBatches overlays them afresh each epoch. test: a Split of the fixed seeded
    set (multimnist.test_set): each of the first test_samples test digits over
    multimnist_pairs partners of other classes: x [M, 36, 36, 1], y two-hot [M, 10], masks
    [y_1, y_2] one-hot, targets [digit_1, digit_2] each shifted digit alone [M, 36, 36, 1].
    """
    (x_train, y_train), (x_test, y_test) = utils.load_mnist(
        data_dir, train_samples=train_samples, test_samples=test_samples)
    return (x_train, y_train), overlaid_split(x_test, y_test, multimnist_pairs,
                                              MULTIMNIST_TEST_SEED), None


def overlaid_split(x, y, pairs, seed):
    """A fixed MultiMNIST Split (multimnist.test_set) of digits x [N, 28, 28, 1], one-hot y
    [N, 10]: each over `pairs` partners of other classes, x [N*pairs, 36, 36, 1]; UserError
    first when that would not fit in memory."""
    check_multimnist_size(len(x), pairs)
    images, two_hot, first, second, classes = multimnist.test_set(x, y, pairs, seed,
                                                                  with_classes=True)
    masks = [utils.to_categorical(classes[:, k], multimnist.N_CLASS) for k in (0, 1)]
    return Split(images, two_hot, masks, [first, second])


def check_multimnist_size(n_digits, pairs):
    """UserError when the MultiMNIST test set of n_digits x pairs images would not fit in the
    memory available now (--multimnist_pairs 3000 on the 10,000 test digits asked for
    hundreds of GiB and ended in a MemoryError traceback), naming the largest value that fits."""
    needed, available = multimnist.test_set_bytes(n_digits, pairs), utils.available_memory()
    if available is None or needed <= available:
        return
    fits = available // multimnist.test_set_bytes(n_digits, 1)
    advice = ('--multimnist_pairs %d or less (or fewer --test_samples)' % fits if fits
              else 'fewer --test_samples')
    raise UserError('--multimnist_pairs %d on %d test digits makes %d test images, about %s '
                    'of memory; %s is available: use %s' % (
                        pairs, n_digits, n_digits * pairs, utils.size_text(needed),
                        utils.size_text(available), advice))


def smallnorb_data(data_dir=None, train_samples=None, test_samples=None, smallnorb_dir=None):
    """--dataset smallnorb: (train, test, None) from the binary-matrix files in smallnorb_dir
    (default data/smallnorb/), prepared as Efficient-CapsNet does (smallnorb.py).

    train: [N, 64, 64, 2] float32 (stereo pair as channels, each channel standardised over
    the split, resized to 64x64), one-hot [N, 5]; batches.CropBatches crops 48x48 at random
    with random brightness and contrast. test: the centre 48x48 crops [M, 48, 48, 2].
    Each split is cut to its first *_samples pairs before its statistics are taken.
    data_dir (MNIST) is not used.
    """
    (x_train, y_train), (x_test, y_test) = smallnorb.load_smallnorb(smallnorb_dir)
    x_train, y_train = x_train[:train_samples], y_train[:train_samples]
    x_test, y_test = x_test[:test_samples], y_test[:test_samples]
    return ((smallnorb.prepare(x_train), utils.to_categorical(y_train, smallnorb.N_CLASS)),
            (smallnorb.center_crop(smallnorb.prepare(x_test)),
             utils.to_categorical(y_test, smallnorb.N_CLASS)), None)


def one_hot(split, n_class):
    """(x, integer labels [N]) -> (x, one-hot float32 [N, n_class])."""
    return split[0], utils.to_categorical(split[1], n_class)


def cifar10_data(data_dir=None, train_samples=None, test_samples=None, cifar10_dir=None):
    """--dataset cifar10: (train, test, None) from the binary version in cifar10_dir (default
    data/cifar10/; cifar10.py). train: [N, 32, 32, 3] float32 in [0, 1], one-hot [N, 10];
    batches.CropBatches crops 24x24 at random. test: the centre 24x24 crops [M, 24, 24, 3].
    data_dir (MNIST) is not used."""
    (x_train, y_train), (x_test, y_test) = cifar10.load_cifar10(cifar10_dir)
    train = (own_data.to_float(x_train[:train_samples]), y_train[:train_samples])
    test = (own_data.to_float(cifar10.center_crop(x_test[:test_samples])),
            y_test[:test_samples])
    return one_hot(train, cifar10.N_CLASS), one_hot(test, cifar10.N_CLASS), None


def svhn_data(data_dir=None, train_samples=None, test_samples=None, svhn_dir=None):
    """--dataset svhn: (train, test, None) from train_32x32.mat / test_32x32.mat in svhn_dir
    (default data/svhn/; svhn.py): x [N, 32, 32, 3] float32 in [0, 1], one-hot [N, 10]
    (digit 0 is class 0). data_dir (MNIST) is not used."""
    (x_train, y_train), (x_test, y_test) = svhn.load_svhn(svhn_dir)
    train = (own_data.to_float(x_train[:train_samples]), y_train[:train_samples])
    test = (own_data.to_float(x_test[:test_samples]), y_test[:test_samples])
    return one_hot(train, svhn.N_CLASS), one_hot(test, svhn.N_CLASS), None


def folder_data(data_dir=None, train_samples=None, test_samples=None):
    """--dataset folder: (train, test, None) of the image folders data_dir/train/<class>/,
    data_dir/test/<class>/ (own_data.load_folder): x [N, H, W, C] float32 in [0, 1], one-hot
    [N, n_class] in the order of the sorted class names."""
    train, test, classes = own_data.load_folder(data_dir, train_samples, test_samples)
    print('--dataset folder: %d classes (%s), %d training and %d test images of %s'
          % (len(classes), ', '.join(classes), len(train[0]), len(test[0]),
             'x'.join(str(d) for d in train[0].shape[1:])))
    return one_hot(train, len(classes)), one_hot(test, len(classes)), None


def npz_data(data_dir=None, train_samples=None, test_samples=None):
    """--dataset npz: (train, test, None) of the .npz file data_dir (own_data.load_npz):
    x [N, H, W, C] float32 in [0, 1], one-hot [N, n_class], n_class the largest label + 1."""
    train, test, n_class = own_data.load_npz(data_dir, train_samples, test_samples)
    print('--dataset npz: %d classes, %d training and %d test images of %s'
          % (n_class, len(train[0]), len(test[0]), 'x'.join(str(d) for d in train[0].shape[1:])))
    return one_hot(train, n_class), one_hot(test, n_class), None


# ---------------------------------------------------------------- training batches
def shifted_batches(x, y, batch_size, seed, workers, shift_fraction=0.1, augment='shift'):
    """MNIST's (and SVHN's, folder's, npz's) training batches: shifted up to shift_fraction
    of the image size, or augment='efficient' (utils.efficient_augment)."""
    augment = utils.efficient_augment if augment == 'efficient' else None
    return batches.ShiftedBatches(x, y, batch_size, int(shift_fraction * x.shape[1]), seed=seed,
                                  augment=augment, workers=workers)


def translated_batches(x, y, batch_size, seed, workers, **_):
    """affNIST's: the centred 40x40 training digits re-placed at random every batch."""
    return batches.ShiftedBatches(x, y, batch_size, 0, seed=seed, workers=workers,
                                  augment=affnist_loader.random_translation)


def overlay_batches(x, y, batch_size, seed, workers, **_):
    """MultiMNIST's: pairs overlaid afresh every epoch."""
    return batches.OverlayBatches(x, y, batch_size, seed=seed, workers=workers)


def crop_batches(crop):
    """The training batches of random crops by crop(x, y, idx, seed, epoch, index)."""
    def make(x, y, batch_size, seed, workers, **_):
        return batches.CropBatches(x, y, batch_size, crop, seed=seed, workers=workers)
    return make


# ---------------------------------------------------------------- validation forms
# --validation_split: the held-out training images in the form of the data set's test set.
# Seeded layouts (affNIST positions, MultiMNIST partners) differ from the test set's seeds.
VALIDATION_SEED = 2019


def as_is(x, y, **_):
    """Held-out images whose test set has their form: a Split of them."""
    return as_split((x, y))


def translated_form(x, y, **_):
    """affNIST: centred 40x40 training digits -> each at one fixed random position."""
    return as_split((affnist_loader.translated_mnist(
        affnist_loader.center_crop(x), affnist_loader.CANVAS, VALIDATION_SEED), y))


def overlaid_form(x, y, multimnist_pairs=MULTIMNIST_PAIRS, **_):
    """MultiMNIST: digits -> a fixed overlaid Split of its own seed."""
    return overlaid_split(x, y, multimnist_pairs, VALIDATION_SEED)


def center_form(center_crop):
    """smallNORB, CIFAR-10: training images -> their centre patches (center_crop)."""
    return lambda x, y, **_: as_split((center_crop(x), y))


# ---------------------------------------------------------------- the records
# One record per --dataset. loader(data_dir, train_samples, test_samples, **its flags) ->
# (train (x, y), test (x, y) or a Split, extra evaluation set or None); help: its words in
# --dataset's help; flags: its own CLI flags (keywords of the loader); digits: digits per
# image (2: one reconstruction and one mask per digit); batches(x, y, batch_size, seed,
# workers, shift_fraction=, augment=): its training batches; own_augmentation: the batches
# bring their own (MNIST's --augment / --shift_fraction do not apply); validation(x, y,
# **flags) -> the Split of held-out training images (None: --validation_split refused);
# networks: {--model: builder keywords} of the network this data set builds (the paper's,
# Efficient-CapsNet's); paper_line: printed after its test.
# Table 1's baseline CNN (§5): no pooling, FC 328 then 192; 35,445,522 parameters on 28x28,
# the paper's 35.4M (the count only fits 'same' convs without pooling). --model cnn's own
# defaults are §5.2's CapsNet-sized CNN with two max-pools (capsulenet.CNN).
MNIST_CNN = dict(pools=0, fc1_units=328)
Dataset = collections.namedtuple(
    'Dataset', 'loader help flags digits batches own_augmentation validation networks '
               'paper_line',
    defaults=((), 1, shifted_batches, False, as_is, {}, None))
DATASETS = {
    'mnist': Dataset(mnist, 'mnist', networks={'cnn': MNIST_CNN}),
    'affnist': Dataset(
        affnist_loader.expanded_mnist,
        'affnist (§5.2: translated MNIST, tested on affNIST)',
        flags=('affnist_dir', 'affnist_cache'), batches=translated_batches,
        own_augmentation=True, validation=translated_form),
    'multimnist': Dataset(
        multimnist_data,
        'multimnist (§6: two overlapping digits on 36x36, generated from MNIST)',
        flags=('multimnist_pairs',), digits=2, batches=overlay_batches, own_augmentation=True,
        validation=overlaid_form, networks={'efficient': multimnist.EFFICIENT},
        paper_line='Paper (§6, MultiMNIST test error): CapsNet %.1f%%, CNN baseline %.1f%%'
                   % (paper.MULTIMNIST['capsnet'], paper.MULTIMNIST['cnn'])),
    'smallnorb': Dataset(
        smallnorb_data, 'smallnorb (the real files in --smallnorb_dir)',
        flags=('smallnorb_dir',), batches=crop_batches(smallnorb.train_batch),
        own_augmentation=True, validation=center_form(smallnorb.center_crop),
        networks={'efficient': smallnorb.EFFICIENT}),
    'cifar10': Dataset(
        cifar10_data, "cifar10 (§7: the real files in --cifar10_dir, with the paper's network)",
        flags=('cifar10_dir',), batches=crop_batches(cifar10.train_batch),
        own_augmentation=True, validation=center_form(cifar10.center_crop),
        networks={'capsnet': cifar10.CAPSNET}),
    'svhn': Dataset(
        svhn_data, "svhn (§7: the real files in --svhn_dir, with the paper's network)",
        flags=('svhn_dir',), networks={'capsnet': svhn.CAPSNET}),
    'folder': Dataset(
        folder_data, 'folder (--data_dir DIR with DIR/train/<class>/*, DIR/test/<class>/*)'),
    'npz': Dataset(
        npz_data, 'npz (--data_dir FILE.npz with x_train, y_train, x_test, y_test)'),
}
# every data set's own flags, and MNIST's augmentation flags (data sets whose batches bring
# their own augmentation refuse them)
ALL_DATASET_FLAGS = tuple(f for name in sorted(DATASETS) for f in DATASETS[name].flags)
AUGMENT_FLAGS = ('augment', 'shift_fraction')


def dataset_flags(name):
    """The CLI flags that apply to --dataset name: its own, and MNIST's augmentation flags
    unless its batches bring their own."""
    record = DATASETS[name]
    return record.flags + (() if record.own_augmentation else AUGMENT_FLAGS)


def dataset_help():
    """--dataset's help: 'which data: ' and each record's words."""
    words = [DATASETS[name].help for name in DATASETS]
    return 'which data: %s or %s' % (', '.join(words[:-1]), words[-1])


def hold_out(dataset, train, n, **data_options):
    """--validation_split n: (train without its last n images, a validation Split of them).

    train: the loader's training (x, y) after --train_samples; the split is the same on
    every run with the same flags (no shuffling), so --resume validates on the same images.
    smallNORB: the held-out pairs share the training split's standardisation statistics.
    UserError when n leaves no training image; a data set without a form for its held-out
    images (none today) is refused in one line too."""
    x, y = train
    if n >= len(x):
        raise UserError('--validation_split %d leaves no training images: the training set '
                        'has %d (after --train_samples)' % (n, len(x)))
    form = DATASETS[dataset].validation
    if form is None:
        raise UserError('--validation_split is not available for --dataset %s' % dataset)
    split = form(x[-n:], y[-n:], **data_options)
    return (x[:-n], y[:-n]), split


def validation_data(kind, split):
    """Keras validation data of a test Split: (x, y) for a classifier, else the training
    model's ([x] + masks, [y] + reconstruction targets)."""
    if kind == 'classifier':
        return split.x, split.y
    return [split.x] + list(split.masks), [split.y] + list(split.targets)
