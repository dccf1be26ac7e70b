"""Training batches: Keras Sequences whose batch `index` of epoch e is a pure function of
(seed, e, index), so runs are reproducible with any --workers and a resumed run reads the
batches the uninterrupted run would.

Batches (the base) writes the seeded order and the index slice once: the epoch's order is
RandomState([seed, epoch]).permutation(N) and batch `index` takes its slice
[index * batch_size, (index + 1) * batch_size); a subclass says what one batch of those
images is. The data-specific augmentation sits beside each reader (affnist_loader,
multimnist, smallnorb, cifar10) and comes in as a function or, for MultiMNIST's three
inputs, OverlayBatches. Which batches a data set trains on: its datasets.DATASETS record.
"""
import numpy as np

import compat as C
import multimnist
import utils
from compat import callbacks


class Batches(C.Sequence):
    """Batches of (x [N, ...], y [N, ...]) in a seeded order, reshuffled every epoch.

    Batch `index` of epoch e depends on (seed, e, index) only, not on the order or number of
    times Keras asks for batches (it peeks at batch 0; distributed runs prefetch): the
    BatchesEpoch callback sets e at each epoch's start. Subclasses define batch(idx, index)
    -> (inputs, targets), idx: int [B] the batch's rows of x. workers_wanted: --workers.
    """

    def __init__(self, x, y, batch_size, seed=None, workers=1):
        super(Batches, self).__init__(**C.loader_kwargs(workers))
        self.workers_wanted = workers
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.seed = np.random.randint(2 ** 31) if seed is None else int(seed) % 2 ** 31
        self.epoch = 0
        self.order = np.random.RandomState([self.seed, 0]).permutation(len(x))

    def __len__(self):
        return int(np.ceil(len(self.x) / float(self.batch_size)))

    def __getitem__(self, index):
        idx = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        inputs, targets = self.batch(idx, index)
        return C.pack_batch(inputs, targets)

    def batch(self, idx, index):
        """(inputs, targets) lists of batch `index` of the current epoch, rows idx int [B]."""
        raise NotImplementedError

    def rng(self, index):
        """The random stream of batch `index` of the current epoch ((seed, epoch) alone is
        the epoch's order)."""
        return np.random.RandomState([self.seed, self.epoch, index + 1])

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.order = np.random.RandomState([self.seed, epoch]).permutation(len(self.x))

    def on_epoch_end(self):
        # keras 2.2.4's enqueuer calls this between its passes; Keras 3 calls it at moments
        # that vary with prefetching, so there BatchesEpoch also sets the epoch at its start.
        self.set_epoch(self.epoch + 1)


class ShiftedBatches(Batches):
    """Training batches ([images, labels], [labels, images]) with random augmentation: by
    default a shift of up to max_shift pixels (zero fill); augment(images [B, H, W, C], rng)
    -> images of any size replaces it when given (utils.efficient_augment, or
    affnist_loader.random_translation: each digit re-placed at random on its canvas)."""

    def __init__(self, x, y, batch_size, max_shift, seed=None, augment=None, workers=1):
        super(ShiftedBatches, self).__init__(x, y, batch_size, seed=seed, workers=workers)
        self.max_shift = max_shift
        self.augment_fn = augment

    def batch(self, idx, index):
        x, y = self.augment(self.x[idx], self.rng(index)), self.y[idx]
        return [x, y], [y, x]

    def augment(self, x, rng):
        """[B, H, W, C] -> the same images, randomly shifted (or augment_fn(x, rng))."""
        if self.augment_fn is not None:
            return self.augment_fn(x, rng)
        return utils.random_shift(x, self.max_shift, rng)


class CropBatches(Batches):
    """Training batches ([patches, y], [y, patches]) of random crops: crop(x, y, idx, seed,
    epoch, index) -> (patches [B, h, w, C], y[idx]), a pure function of its arguments
    (smallnorb.train_batch: 48x48 of [N, 64, 64, 2] with random brightness and contrast;
    cifar10.train_batch: 24x24 of [N, 32, 32, 3]); y one-hot [N, n_class]."""

    def __init__(self, x, y, batch_size, crop, seed=None, workers=1):
        super(CropBatches, self).__init__(x, y, batch_size, seed=seed, workers=workers)
        self.crop = crop

    def batch(self, idx, index):
        patches, y = self.crop(self.x, self.y, idx, self.seed, self.epoch, index)
        return [patches, y], [y, patches]


class OverlayBatches(Batches):
    """MultiMNIST training batches ([images, y_1, y_2], [two_hot, digit_1, digit_2]) of
    multimnist.overlay_batch: x [N, 28, 28, 1] are the training digits, each the first digit
    of one pair per epoch, over a partner of another class; pairs and shifts are fresh every
    epoch. images, digit_k: [B, 36, 36, 1]; y_k: one-hot [B, 10] of digit k (the decoder's
    masks); two_hot [B, 10] (the margin loss)."""

    def __init__(self, x, y, batch_size, seed=None, workers=1):
        super(OverlayBatches, self).__init__(x, y, batch_size, seed=seed, workers=workers)
        self.labels = multimnist.int_labels(y)

    def batch(self, idx, index):
        images, two_hot, first, second, classes = multimnist.overlay_batch(
            self.x, self.labels, idx, self.seed, self.epoch, index, with_classes=True)
        y_1, y_2 = (utils.to_categorical(classes[:, k], multimnist.N_CLASS) for k in (0, 1))
        return [images, y_1, y_2], [two_hot, first, second]


class ClassifierBatches(C.Sequence):
    """Wraps CapsNet batches ([x, y, ...], [y, x, ...]) as (x, y) for a plain classifier
    (--model cnn); y: the labels the margin loss takes (MultiMNIST: two-hot)."""

    def __init__(self, batches):
        super(ClassifierBatches, self).__init__(**C.loader_kwargs(batches.workers_wanted))
        self.batches = batches
        self.batch_size = batches.batch_size
        self.workers_wanted = batches.workers_wanted

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        inputs, targets = self.batches[index]
        return inputs[0], targets[0]

    def set_epoch(self, epoch):
        self.batches.set_epoch(epoch)

    def on_epoch_end(self):
        self.batches.on_epoch_end()


class BatchesEpoch(callbacks.Callback):
    """Tells the batches (Keras 3) which epoch begins, before its batches are read."""

    def __init__(self, batches):
        super(BatchesEpoch, self).__init__()
        self.batches = batches

    def on_epoch_begin(self, epoch, logs=None):
        self.batches.set_epoch(epoch)
