"""The CLI's data sets: loaders returning (train, test split, extra evaluation set), their
flags, and their training batches.

A loader takes (data_dir, train_samples, test_samples, **its own flags) and returns
(train (x, y), test (x, y) or a Split, extra evaluation set or None); DATASETS maps the
--dataset names to them, DATASET_FLAGS to their own flags, DATASET_DIGITS to the digits per
image; training_batches gives their training batches, hold_out a held-out validation set
(--validation_split), validation_data Keras' validation data.
"""
import collections

import affnist_loader
import cifar10
import multimnist
import own_data
import smallnorb
import svhn
import training
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
    training.OverlayBatches overlays them afresh each epoch. test: a Split of the fixed seeded
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
    the split, resized to 64x64), one-hot [N, 5]; training.CropBatches crops 48x48 at random
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
    training.PatchBatches crops 24x24 at random. test: the centre 24x24 crops [M, 24, 24, 3].
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


# --dataset name -> loader(data_dir, train_samples, test_samples, **its own flags)
# -> (train (x, y), test (x, y) or a Split, extra evaluation set or None)
DATASETS = {'mnist': mnist, 'affnist': affnist_loader.expanded_mnist,
            'multimnist': multimnist_data, 'smallnorb': smallnorb_data,
            'cifar10': cifar10_data, 'svhn': svhn_data, 'folder': folder_data, 'npz': npz_data}
DATASET_FLAGS = {'mnist': (), 'affnist': ('affnist_dir', 'affnist_cache'),
                 'multimnist': ('multimnist_pairs',), 'smallnorb': ('smallnorb_dir',),
                 'cifar10': ('cifar10_dir',), 'svhn': ('svhn_dir',), 'folder': (), 'npz': ()}
ALL_DATASET_FLAGS = tuple(f for name in sorted(DATASET_FLAGS) for f in DATASET_FLAGS[name])
# training augmentation flags: MNIST's only (the others' batches bring their own, see below)
AUGMENT_FLAGS = ('augment', 'shift_fraction')
OWN_AUGMENTATION = ('affnist', 'multimnist', 'smallnorb', 'cifar10')
# digits per image of a data set (2: one reconstruction and one mask per digit)
DATASET_DIGITS = {'multimnist': 2}


def training_batches(dataset, x, y, batch_size, seed, workers, shift_fraction, augment):
    """The training batches of a dataset: affNIST's digits re-placed at random on 40x40
    every epoch; MultiMNIST pairs overlaid afresh; smallNORB's and CIFAR-10's random crops;
    MNIST (and SVHN, folder, npz) shifted up to shift_fraction of its size, or
    augment='efficient'."""
    if dataset == 'affnist':
        return training.TranslatedBatches(x, y, batch_size, seed=seed, workers=workers)
    if dataset == 'multimnist':
        return training.OverlayBatches(x, y, batch_size, seed=seed, workers=workers)
    if dataset == 'smallnorb':
        return training.CropBatches(x, y, batch_size, seed=seed, workers=workers)
    if dataset == 'cifar10':
        return training.PatchBatches(x, y, batch_size, seed=seed, workers=workers)
    return training.ShiftedBatches(x, y, batch_size, int(shift_fraction * x.shape[1]), seed=seed,
                                   augment=utils.efficient_augment if augment == 'efficient' else None,
                                   workers=workers)


# --validation_split: the held-out training images in the form of the data set's test set.
# Seeded layouts (affNIST positions, MultiMNIST partners) differ from the test set's seeds.
VALIDATION_SEED = 2019
VALIDATION_FORMS = {
    'mnist': lambda x, y, **_: as_split((x, y)),
    # centred 40x40 training digits -> each at one fixed random position, as the test set
    'affnist': lambda x, y, **_: as_split((affnist_loader.translated_mnist(
        affnist_loader.center_crop(x), affnist_loader.CANVAS, VALIDATION_SEED), y)),
    'multimnist': lambda x, y, multimnist_pairs=MULTIMNIST_PAIRS, **_: overlaid_split(
        x, y, multimnist_pairs, VALIDATION_SEED),
    # prepared 64x64 pairs -> their centre 48x48 patches, as the test set
    'smallnorb': lambda x, y, **_: as_split((smallnorb.center_crop(x), y)),
    # 32x32 training images -> their centre 24x24 patches, as the test set
    'cifar10': lambda x, y, **_: as_split((cifar10.center_crop(x), y)),
    'svhn': lambda x, y, **_: as_split((x, y)),
    'folder': lambda x, y, **_: as_split((x, y)),
    'npz': lambda x, y, **_: as_split((x, y)),
}


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
    if dataset not in VALIDATION_FORMS:
        raise UserError('--validation_split is not available for --dataset %s' % dataset)
    split = VALIDATION_FORMS[dataset](x[-n:], y[-n:], **data_options)
    return (x[:-n], y[:-n]), split


def validation_data(kind, split):
    """Keras validation data of a test Split: (x, y) for a classifier, else the training
    model's ([x] + masks, [y] + reconstruction targets)."""
    if kind == 'classifier':
        return split.x, split.y
    return [split.x] + list(split.masks), [split.y] + list(split.targets)
