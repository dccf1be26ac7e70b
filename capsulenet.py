"""CapsNet on MNIST (Sabour, Frosst & Hinton 2017): train, test, manipulate.

Usage:
    python capsulenet.py                       # train 50 epochs, routings 3
    python capsulenet.py --routings 1 --epochs 10
    python capsulenet.py -t -w result/trained_model.h5            # test
    python capsulenet.py -t -w result/trained_model.h5 --digit 5  # manipulate capsule dims
    python capsulenet.py --dataset affnist --model cnn   # §5.2: translated MNIST -> affNIST

Runs on keras==2.2.4 (TensorFlow 1.x) and on Keras 3 (TensorFlow, JAX or PyTorch backend;
pick it with KERAS_BACKEND). Outputs go to --save_dir (default ./result).
"""
import argparse
import csv
import os
import re
import shutil
import sys
import time
import zipfile

import numpy as np

import compat as C
from compat import layers, models, callbacks, UserError
from capsulelayers import CapsuleLayer, PrimaryCap, Length, Mask, EfficientPrimaryCap, FCCaps
import affnist_loader
import utils


# ---------------------------------------------------------------- model
def CapsNet(input_shape, n_class, routings, conv1_filters=256, conv1_kernel=9,
            primary_channels=32, primary_dim=8, primary_kernel=9, primary_strides=2,
            digit_dim=16, decoder_units=(512, 1024)):
    """Builds the three CapsNet models sharing one set of weights.

    input_shape: [H, W, C] of the images; n_class: number of digit capsules.
    Returns (train_model, eval_model, manipulate_model):
      train_model: [image [batch, H, W, C], label [batch, n_class]]
                   -> [lengths [batch, n_class], reconstruction [batch, H, W, C]]
      eval_model: image -> [lengths, reconstruction of the longest capsule]
      manipulate_model: [image, label, noise [batch, n_class, digit_dim]] -> reconstruction
    Defaults are the paper's MNIST network: 8,215,568 parameters.
    """
    x = layers.Input(shape=tuple(input_shape))
    conv1 = layers.Conv2D(filters=conv1_filters, kernel_size=conv1_kernel, strides=1,
                          padding='valid', activation='relu', name='conv1')(x)
    primarycaps = PrimaryCap(conv1, dim_capsule=primary_dim, n_channels=primary_channels,
                             kernel_size=primary_kernel, strides=primary_strides, padding='valid')
    digitcaps = CapsuleLayer(num_capsule=n_class, dim_capsule=digit_dim, routings=routings,
                             name='digitcaps')(primarycaps)
    out_caps = Length(name='capsnet')(digitcaps)

    y = layers.Input(shape=(n_class,))
    masked_by_y = Mask(name='mask')([digitcaps, y])   # training: the true label's capsule
    masked = Mask(name='mask_longest')(digitcaps)      # prediction: the longest capsule

    n_pixels = int(np.prod(input_shape))
    decoder = C.dense_sequential(list(decoder_units) + [n_pixels],
                                 ['relu'] * len(decoder_units) + ['sigmoid'],
                                 input_dim=digit_dim * n_class, name='decoder')
    decoder.add(layers.Reshape(target_shape=tuple(input_shape), name='out_recon'))

    train_model = models.Model([x, y], [out_caps, decoder(masked_by_y)])
    eval_model = models.Model(x, [out_caps, decoder(masked)])

    noise = layers.Input(shape=(n_class, digit_dim))
    noised_digitcaps = layers.Add()([digitcaps, noise])
    masked_noised_y = Mask(name='mask_noised')([noised_digitcaps, y])
    manipulate_model = models.Model([x, y, noise], decoder(masked_noised_y))
    return train_model, eval_model, manipulate_model


# ---------------------------------------------------------------- Efficient-CapsNet
def EfficientCapsNet(input_shape, n_class, conv_filters=(32, 64, 64, 128),
                     conv_kernels=(5, 3, 3, 3), conv_strides=(1, 1, 1, 2), primary_kernel=9,
                     primary_dim=8, digit_dim=16, decoder_units=(512, 1024), bn_momentum=0.99):
    """Efficient-CapsNet (Mazzia et al. 2021): the same three models as `CapsNet`.

    Conv stack (valid padding, ReLU, each followed by BatchNorm) -> depthwise primary
    capsules [batch, 16, 8] -> FCCaps self-attention routing [batch, n_class, digit_dim]
    -> lengths. Decoder (named 'decoder', as in CapsNet) on the masked capsules.
    Returns (train_model, eval_model, manipulate_model) with CapsNet's inputs and outputs.
    Defaults: the MNIST network, 161,824 trainable parameters without the decoder.
    """
    x = layers.Input(shape=tuple(input_shape))
    h = x
    for i, (f, k, st) in enumerate(zip(conv_filters, conv_kernels, conv_strides)):
        h = layers.Conv2D(int(f), int(k), strides=int(st), padding='valid', activation='relu',
                          kernel_initializer='he_normal', name='conv%d' % (i + 1))(h)
        h = layers.BatchNormalization(momentum=bn_momentum, name='bn%d' % (i + 1))(h)
    primarycaps = EfficientPrimaryCap(h, dim_capsule=primary_dim, kernel_size=primary_kernel)
    digitcaps = FCCaps(n_class, digit_dim, name='digitcaps')(primarycaps)
    out_caps = Length(name='capsnet')(digitcaps)

    y = layers.Input(shape=(n_class,))
    n_pixels = int(np.prod(input_shape))
    decoder = C.dense_sequential(list(decoder_units) + [n_pixels],
                                 ['relu'] * len(decoder_units) + ['sigmoid'],
                                 input_dim=digit_dim * n_class, name='decoder')
    decoder.add(layers.Reshape(target_shape=tuple(input_shape), name='out_recon'))

    train_model = models.Model([x, y], [out_caps, decoder(Mask(name='mask')([digitcaps, y]))])
    eval_model = models.Model(x, [out_caps, decoder(Mask(name='mask_longest')(digitcaps))])
    noise = layers.Input(shape=(n_class, digit_dim))
    noised = layers.Add()([digitcaps, noise])
    manipulate_model = models.Model([x, y, noise], decoder(Mask(name='mask_noised')([noised, y])))
    return train_model, eval_model, manipulate_model


def trainable_count(model, exclude=('decoder',)):
    """Number of trainable parameters in model's layers, leaving out the named ones."""
    return int(sum(np.prod(C.int_shape(w)) for layer in model.layers
                   if layer.name not in exclude for w in layer.trainable_weights))


def margin_loss(y_true, y_pred):
    """Margin loss (Eq. 4): m+ 0.9, m- 0.1, lambda 0.5, summed over classes.

    y_true: one-hot [batch, n_class]; y_pred: lengths [batch, n_class] -> [batch]
    (Keras takes the mean over the batch).
    """
    present = y_true * C.square(C.relu(0.9 - y_pred))
    absent = 0.5 * (1 - y_true) * C.square(C.relu(y_pred - 0.1))
    return C.reduce_sum(present + absent, -1)


def accuracy(y_true, y_pred):
    """1 where the longest capsule is the true class: [batch]. Named so log.csv columns
    read `capsnet_accuracy` on every Keras version."""
    return C.cast(C.equal(C.argmax(y_true, -1), C.argmax(y_pred, -1)), C.floatx())


def compile_model(model, lr, lam_recon):
    if is_classifier(model):  # no decoder (--model cnn): softmax + cross-entropy
        model.compile(optimizer=C.adam(lr), loss='categorical_crossentropy', metrics=[accuracy])
        return
    model.compile(optimizer=C.adam(lr), loss=[margin_loss, 'mse'],
                  loss_weights=[1., lam_recon], metrics={'capsnet': [accuracy]})


# ---------------------------------------------------------------- data
class ShiftedBatches(C.Sequence):
    """Training batches ([images, labels], [labels, images]) with random augmentation.

    Reshuffled every epoch, seeded. By default shifts up to max_shift pixels (zero fill);
    augment(images [batch, H, W, C], rng) -> same shape replaces the shift when given
    (e.g. utils.efficient_augment). Batch `index` of epoch e depends on (seed, e, index)
    only, not on the order or number of times Keras asks for batches (it peeks at batch 0;
    distributed runs prefetch): the BatchesEpoch callback sets e at each epoch's start.
    """

    def __init__(self, x, y, batch_size, max_shift, seed=None, augment=None, workers=1):
        super(ShiftedBatches, self).__init__(**C.loader_kwargs(workers))
        self.workers_wanted = workers
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.max_shift = max_shift
        self.augment_fn = augment
        self.seed = np.random.randint(2 ** 31) if seed is None else int(seed) % 2 ** 31
        self.epoch = 0
        self.order = np.random.RandomState([self.seed, 0]).permutation(len(x))

    def __len__(self):
        return int(np.ceil(len(self.x) / float(self.batch_size)))

    def __getitem__(self, index):
        idx = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        x = self.augment(self.x[idx], np.random.RandomState([self.seed, self.epoch, index + 1]))
        y = self.y[idx]
        return C.pack_batch([x, y], [y, x])

    def augment(self, x, rng):
        """[batch, H, W, C] -> the same images, randomly shifted (or augment_fn(x, rng))."""
        if self.augment_fn is not None:
            return self.augment_fn(x, rng)
        return utils.random_shift(x, self.max_shift, rng)

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.order = np.random.RandomState([self.seed, epoch]).permutation(len(self.x))

    def on_epoch_end(self):
        # keras 2.2.4's enqueuer calls this between its passes; Keras 3 calls it at moments
        # that vary with prefetching, so there BatchesEpoch also sets the epoch at its start.
        self.set_epoch(self.epoch + 1)


class BatchesEpoch(callbacks.Callback):
    """Tells ShiftedBatches (Keras 3) which epoch begins, before its batches are read."""

    def __init__(self, batches):
        super(BatchesEpoch, self).__init__()
        self.batches = batches

    def on_epoch_begin(self, epoch, logs=None):
        self.batches.set_epoch(epoch)


class TranslatedBatches(ShiftedBatches):
    """ShiftedBatches for digits centred on a larger canvas (x: [N, 40, 40, 1], MNIST padded
    by 6): every batch re-places each digit's central digit_size box at a fresh uniform random
    position of the canvas (affnist_loader.translated_mnist), so positions change every epoch."""

    def __init__(self, x, y, batch_size, digit_size=28, seed=None, workers=1):
        super(TranslatedBatches, self).__init__(x, y, batch_size, max_shift=0, seed=seed,
                                                workers=workers)
        self.digit_size = digit_size

    def augment(self, x, rng):
        digits = affnist_loader.center_crop(x, self.digit_size)
        return affnist_loader.translated_mnist(digits, x.shape[1], rng)


class ClassifierBatches(C.Sequence):
    """Wraps CapsNet batches ([x, y], [y, x]) as (x, y) for a plain classifier (--model cnn)."""

    def __init__(self, batches):
        super(ClassifierBatches, self).__init__(**C.loader_kwargs(batches.workers_wanted))
        self.batches = batches
        self.workers_wanted = batches.workers_wanted

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        (x, y), _ = self.batches[index]
        return x, y

    def on_epoch_end(self):
        self.batches.on_epoch_end()


# ---------------------------------------------------------------- callbacks
class WeightsCheckpoint(callbacks.Callback):
    """Writes optimizer-{epoch:02d}.npz (optimizer state) then weights-{epoch:02d}.h5 (legacy
    Keras HDF5 layout) after each epoch, both atomically. Writes nothing for an epoch that
    `nan_guard` saw go NaN, so the last checkpoint on disk is always a good one.

    keep: how many of the newest pairs stay (0: all); older pairs are removed only after the
    new pair is on disk whole, so a crash at any moment leaves at least `keep` good pairs.
    """

    def __init__(self, save_dir, nan_guard=None, template=None, keep=0):
        super(WeightsCheckpoint, self).__init__()
        self.save_dir = save_dir
        self.nan_guard = nan_guard
        self.template = template  # the single-device model behind a multi_gpu_model
        self.keep = keep

    def on_epoch_end(self, epoch, logs=None):
        if self.nan_guard is not None and self.nan_guard.where is not None:
            return
        state = C.get_optimizer_state(self.model)
        if state is not None:
            C.save_arrays_npz(state, os.path.join(self.save_dir, 'optimizer-%02d.npz' % (epoch + 1)))
        C.save_weights_h5(self.template or self.model,
                          os.path.join(self.save_dir, 'weights-%02d.h5' % (epoch + 1)))
        if self.keep > 0:
            prune_checkpoints(self.save_dir, epoch + 1, self.keep)


def prune_checkpoints(save_dir, newest, keep):
    """Removes the weights-XX.h5 / optimizer-XX.npz pairs of epochs <= newest except the
    `keep` newest of them. Files of later epochs (a run resumed from an older checkpoint)
    are left alone: they are overwritten as training reaches them."""
    done = [epoch for epoch, _ in checkpoints(save_dir) if epoch <= newest]
    for epoch in done[keep:]:
        for name in ('weights-%02d.h5' % epoch, 'optimizer-%02d.npz' % epoch):
            path = os.path.join(save_dir, name)
            if os.path.exists(path):
                os.remove(path)


class BestWeights(callbacks.Callback):
    """Writes best_model.h5 (atomically) at the end of each epoch whose logs[monitor] beats
    every earlier epoch's, as Keras' ModelCheckpoint(save_best_only=True) does, in this repo's
    weights format. best: the best value of the epochs before this run (--resume)."""

    def __init__(self, path, monitor, best=None, template=None, nan_guard=None):
        super(BestWeights, self).__init__()
        self.path, self.monitor, self.best = path, monitor, best
        self.template = template
        self.nan_guard = nan_guard

    def on_epoch_end(self, epoch, logs=None):
        if self.nan_guard is not None and self.nan_guard.where is not None:
            return  # weights of a NaN epoch are never anybody's best
        value = (logs or {}).get(self.monitor)
        if value is None or not np.isfinite(value):
            return
        if self.best is None or value > self.best:
            self.best = float(value)
            C.save_weights_h5(self.template or self.model, self.path)


class NaNGuard(callbacks.TerminateOnNaN):
    """Keras TerminateOnNaN (stops training on a NaN/Inf loss) that also records where:
    `where` = (epoch, batch) of the first bad batch, None while the loss is finite."""

    def __init__(self):
        super(NaNGuard, self).__init__()
        self.where = None
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_batch_end(self, batch, logs=None):
        super(NaNGuard, self).on_batch_end(batch, logs)
        loss = (logs or {}).get('loss')
        if self.where is None and loss is not None and not np.all(np.isfinite(loss)):
            self.where = (self.epoch, batch)
            self.model.stop_training = True


class EpochStats(callbacks.Callback):
    """Adds `lr` and `epoch_time` (seconds) to each epoch's logs, so CSVLogger records them
    under the same names on every Keras (Keras 3's scheduler calls it `learning_rate`)."""

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.pop('learning_rate', None)
            logs['epoch_time'] = round(time.time() - self.start, 2)
            logs['lr'] = C.get_learning_rate(self.model)


# ---------------------------------------------------------------- train / test
def scheduled_lr(args, epoch):
    """Learning rate of epoch (from 0): max(lr_min, lr * lr_decay^epoch)."""
    return max(getattr(args, 'lr_min', None) or 0., args.lr * (args.lr_decay ** epoch))


def train(model, eval_model, data, args, initial_epoch=0, parallel=lambda m: m):
    """Trains `model` on data ((x_train, y_train), (x_test, y_test)); writes to args.save_dir.

    initial_epoch > 0 (--resume, weights already loaded): the optimizer state saved with that
    checkpoint is restored where present, the LR schedule continues at that epoch and log.csv
    (trimmed to the epochs before it) is appended to. parallel(model) is the model actually
    compiled and fitted (see C.distribution_scope).
    """
    (x_train, y_train), (x_test, y_test) = data
    template, model = model, parallel(model)
    compile_model(model, args.lr, args.lam_recon)
    log_path = os.path.join(args.save_dir, 'log.csv')
    if initial_epoch > 0:
        restore_optimizer(model, os.path.join(args.save_dir, 'optimizer-%02d.npz' % initial_epoch))
        trim_log(log_path, initial_epoch)
    nan_guard = NaNGuard()
    monitor = validation_monitor(model)
    best_path = os.path.join(args.save_dir, 'best_model.h5')
    best = logged_best(log_path, monitor) if initial_epoch > 0 and os.path.isfile(best_path) else None
    cbs = [callbacks.LearningRateScheduler(lambda epoch: scheduled_lr(args, epoch)),
           EpochStats(),
           nan_guard,
           callbacks.CSVLogger(log_path, append=initial_epoch > 0),
           WeightsCheckpoint(args.save_dir, nan_guard, template,
                             keep=getattr(args, 'keep_checkpoints', 0)),
           BestWeights(best_path, monitor, best, template, nan_guard)]
    if args.debug:
        cbs.append(C.tensorboard(os.path.join(args.save_dir, 'tensorboard-logs'), args.batch_size))
    cbs += early_stopping_callbacks(model, args)
    seed = None if args.seed is None else args.seed + initial_epoch
    make_batches = TRAIN_BATCHES.get(getattr(args, 'dataset', 'mnist'))
    if make_batches is not None:
        batches = make_batches(x_train, y_train, args, seed)
    else:
        max_shift = int(args.shift_fraction * x_train.shape[1])
        augment = utils.efficient_augment if getattr(args, 'augment', None) == 'efficient' else None
        batches = ShiftedBatches(x_train, y_train, args.batch_size, max_shift, seed=seed,
                                 augment=augment, workers=getattr(args, 'workers', 1))
    if C.KERAS3 and isinstance(batches, ShiftedBatches):
        cbs.append(BatchesEpoch(batches))
    validation = ([x_test, y_test], [y_test, x_test])
    if is_classifier(model):
        batches, validation = ClassifierBatches(batches), (x_test, y_test)
    C.fit(model, batches, epochs=args.epochs, callbacks_list=cbs, initial_epoch=initial_epoch,
          validation_data=validation, workers=batches.workers_wanted)
    if nan_guard.where is not None:
        epoch, batch = nan_guard.where
        last = latest_checkpoint(args.save_dir)
        raise UserError('loss became NaN/Inf in epoch %d (batch %d); training stopped, '
                        'trained_model.h5 not written; last good checkpoint: %s'
                        % (epoch + 1, batch, os.path.basename(last[1]) if last else 'none'))
    weights_path = os.path.join(args.save_dir, 'trained_model.h5')
    C.save_weights_h5(template, weights_path)
    print('Trained model saved to %s' % weights_path)
    utils.plot_log(log_path, os.path.join(args.save_dir, 'log.png'))
    return model


def test(eval_model, data, args):
    """Prints test accuracy / error and, for models with a decoder, writes real_and_recon.png.
    Returns the accuracy."""
    x_test, y_test = data
    outputs = eval_model.predict(x_test, batch_size=args.batch_size)
    y_pred, x_recon = (outputs, None) if is_classifier(eval_model) else outputs
    acc = float(np.mean(np.argmax(y_pred, 1) == np.argmax(y_test, 1)))
    print('Test accuracy: %.4f  (error %.2f%%) on %d images' % (acc, 100 * (1 - acc), len(x_test)))
    if x_recon is None:  # the CNN: no reconstructions to show
        return acc
    n = min(50, len(x_test))
    grid = utils.combine_images(np.concatenate([x_test[:n], x_recon[:n]]), width=10)
    path = os.path.join(args.save_dir, 'real_and_recon.png')
    utils.save_image(grid, path)
    print('Reconstructions (real above, reconstructed below) saved to %s' % path)
    return acc


def manipulate_latent(model, data, args):
    """Writes manipulate-<digit>.png: one row per capsule dimension, columns adding
    -0.25 .. 0.25 (step 0.05) to that dimension of the digit's capsule."""
    x_test, y_test = data
    candidates = np.where(np.argmax(y_test, 1) == args.digit)[0]
    if len(candidates) == 0:
        raise UserError('no test image of digit %d in the test set used' % args.digit)
    index = candidates[np.random.RandomState(args.seed).randint(len(candidates))]
    x, y = x_test[index:index + 1], y_test[index:index + 1]
    n_class, dim = C.int_shape(model.inputs[2])[1:]
    steps = np.linspace(-0.25, 0.25, 11)
    noise = np.zeros((dim * len(steps), n_class, dim), dtype='float32')
    for d in range(dim):
        noise[d * len(steps):(d + 1) * len(steps), :, d] = steps[:, None]
    n = len(noise)
    recon = model.predict([np.repeat(x, n, 0), np.repeat(y, n, 0), noise], batch_size=len(steps))
    path = os.path.join(args.save_dir, 'manipulate-%d.png' % args.digit)
    utils.save_image(utils.combine_images(recon, height=dim), path)
    print('Manipulated result saved to %s' % path)


# ---------------------------------------------------------------- CLI
class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad flags as one line (no usage dump) and exits 2."""

    def error(self, message):
        self.exit(2, 'error: %s\n' % message)


# Training recipe per --model: used for each of these flags the user did not set.
RECIPES = {
    'capsnet': dict(epochs=50, batch_size=100, lr=0.001, lr_decay=0.9, lr_min=0.,
                    augment='shift'),
    'efficient': dict(epochs=150, batch_size=16, lr=5e-4, lr_decay=0.97, lr_min=5e-5,
                      augment='efficient'),
}


class RecipeParser(OneLineParser):
    """OneLineParser that fills the flags left unset (None) from RECIPES[--model]."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extra = super(RecipeParser, self).parse_known_args(args, namespace)
        recipe = RECIPES.get(getattr(namespace, 'model', None), RECIPES['capsnet'])
        for key, value in recipe.items():
            if getattr(namespace, key, None) is None:
                setattr(namespace, key, value)
        return namespace, extra


def _bounded(kind, low=None, high=None, low_open=False):
    def check(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError('%r is not a valid %s' % (text, kind.__name__))
        if low is not None and (value < low or (low_open and value == low)):
            raise argparse.ArgumentTypeError('%s must be %s %s' % (text, '>' if low_open else '>=', low))
        if high is not None and value > high:
            raise argparse.ArgumentTypeError('%s must be <= %s' % (text, high))
        return value
    return check


def build_parser():
    p = RecipeParser(description='Capsule Network on MNIST (train, test, manipulate).')
    p.add_argument('--model', default='capsnet', choices=sorted(MODELS), help='which network')
    p.add_argument('--dataset', default='mnist', choices=sorted(DATASETS), help='which data')
    p.add_argument('--epochs', default=None, type=_bounded(int, 1),
                   help='training epochs (default: capsnet 50, efficient 150)')
    p.add_argument('--batch_size', default=None, type=_bounded(int, 1),
                   help='images per step (default: capsnet 100, efficient 16)')
    p.add_argument('--lr', default=None, type=_bounded(float, 0, low_open=True),
                   help='initial learning rate, Adam (default: capsnet 0.001, efficient 5e-4)')
    p.add_argument('--lr_decay', default=None, type=_bounded(float, 0, 1, low_open=True),
                   help='learning rate multiplier per epoch: lr_e = max(lr_min, lr * lr_decay^e) '
                        '(default: capsnet 0.9, efficient 0.97)')
    p.add_argument('--lr_min', default=None, type=_bounded(float, 0),
                   help='learning rate floor (default: capsnet 0, efficient 5e-5)')
    p.add_argument('--augment', default=None, choices=['shift', 'efficient'],
                   help='training augmentation: shift (up to --shift_fraction) or efficient '
                        '(rotation, shift, squeeze, erase); default: shift for capsnet, '
                        'efficient for efficient')
    p.add_argument('--lam_recon', default=0.392, type=_bounded(float, 0),
                   help='weight of the reconstruction MSE (0.392 = 0.0005 * 784)')
    p.add_argument('-r', '--routings', default=3, type=_bounded(int, 1),
                   help='routing iterations (>= 1)')
    p.add_argument('--shift_fraction', default=0.1, type=_bounded(float, 0, 0.5),
                   help='max random shift as a fraction of the image size (0.1 -> 2 px)')
    p.add_argument('--debug', action='store_true', help='write TensorBoard logs')
    p.add_argument('--save_dir', default='./result', help='where weights, logs and figures go')
    p.add_argument('-t', '--testing', action='store_true',
                   help='test the model given by -w instead of training')
    p.add_argument('--digit', default=5, type=_bounded(int, 0, 9),
                   help='digit whose capsule is manipulated (with -t)')
    p.add_argument('-w', '--weights', default=None, help='weights .h5 to load (test or fine-tune)')
    p.add_argument('--data_dir', default=None,
                   help='folder with the MNIST idx files (default data/mnist, else download)')
    p.add_argument('--train_samples', default=None, type=_bounded(int, 1),
                   help='train on the first N training images only (quick runs)')
    p.add_argument('--test_samples', default=None, type=_bounded(int, 1),
                   help='validate and test on the first N test images only')
    p.add_argument('--seed', default=None, type=int, help='random seed (shuffling, shifts, init)')
    p.add_argument('--multi_gpu', default=0, type=_bounded(int, 0),
                   help='data-parallel training on N GPUs (0/1: off; TF_CONFIG set: all workers); '
                        '--batch_size is split between them and must be divisible by N')
    p.add_argument('--mixed_precision', default='off', choices=sorted(C.PRECISIONS),
                   help='convolutions and dense layers compute in bf16 or fp16 (loss scaling) '
                        'with float32 variables; capsule math stays float32 (Keras 3 only)')
    p.add_argument('--workers', default=1, type=_bounded(int, 1),
                   help='processes preparing training batches (augmentation); 1: in the training '
                        'process. Batches are the same for any N (they depend on seed, epoch '
                        'and index only)')
    p.add_argument('--keep_checkpoints', default=2, type=_bounded(int, 0), metavar='N',
                   help='keep only the N newest weights-XX.h5 / optimizer-XX.npz pairs (0: all); '
                        'best_model.h5 (best validation accuracy) and trained_model.h5 (last '
                        'epoch) are written besides')
    p.add_argument('--resume', action='store_true',
                   help='continue training from the newest weights-XX.h5 in --save_dir '
                        '(epoch, LR schedule and optimizer state), appending to log.csv')
    p.add_argument('--reproduce', default=None, choices=['table1'],
                   help="train the paper's Table 1 configurations (routings 1/2/3, with and "
                        "without reconstruction) in turn under <save_dir>/table1/ (resumable) "
                        "and print paper vs ours")
    p.add_argument('--affnist_dir', default=None,
                   help='real affNIST files for --dataset affnist: a folder (test_batches/, '
                        'test_batches.zip, test.mat ...), one .mat or a downloaded .zip; without '
                        'it (and with no files in data/affnist/) a generated affNIST-style set is used')
    p.add_argument('--affnist_cache', default=None,
                   help='folder caching the generated affNIST-style set (default data/affnist/)')
    p.add_argument('--early_stopping', default=None, type=_bounded(int, 0), metavar='PATIENCE',
                   help='stop when validation accuracy has not improved for PATIENCE epochs')
    p.add_argument('--stop_at_val_acc', default=None, type=_bounded(float, 0, 1, low_open=True),
                   help='stop once validation accuracy reaches this (the paper stopped its '
                        'affNIST models at ~0.992 on expanded MNIST)')
    arch = p.add_argument_group('architecture (defaults: the paper)')
    arch.add_argument('--conv1_filters', default=256, type=_bounded(int, 1))
    arch.add_argument('--conv1_kernel', default=9, type=_bounded(int, 1))
    arch.add_argument('--primary_channels', default=32, type=_bounded(int, 1),
                      help='primary capsule channels (32 -> 1152 capsules on 28x28)')
    arch.add_argument('--primary_dim', default=8, type=_bounded(int, 1))
    arch.add_argument('--primary_kernel', default=9, type=_bounded(int, 1))
    arch.add_argument('--primary_strides', default=2, type=_bounded(int, 1))
    arch.add_argument('--digit_dim', default=16, type=_bounded(int, 1))
    return p


def architecture(args):
    return dict(conv1_filters=args.conv1_filters, conv1_kernel=args.conv1_kernel,
                primary_channels=args.primary_channels, primary_dim=args.primary_dim,
                primary_kernel=args.primary_kernel, primary_strides=args.primary_strides,
                digit_dim=args.digit_dim)


def capsnet_from_args(args, input_shape, n_class):
    """The paper's CapsNet sized by the architecture flags: (train, eval, manipulate) models."""
    return CapsNet(input_shape, n_class=n_class, routings=args.routings, **architecture(args))


def mnist_from_args(args):
    """MNIST from --data_dir, cut to --train_samples / --test_samples."""
    (x_train, y_train), (x_test, y_test) = utils.load_mnist(args.data_dir)
    return ((x_train[:args.train_samples], y_train[:args.train_samples]),
            (x_test[:args.test_samples], y_test[:args.test_samples]))


def efficient_from_args(args, input_shape, n_class):
    """Efficient-CapsNet (its own fixed architecture): (train, eval, manipulate) models."""
    return EfficientCapsNet(input_shape, n_class=n_class)


# --model and --dataset choices: name -> builder(args, input_shape, n_class) / loader(args)
MODELS = {'capsnet': capsnet_from_args, 'efficient': efficient_from_args}
DATASETS = {'mnist': mnist_from_args}


# ---------------------------------------------------------------- affNIST (paper §5.2)
def BaselineCNN(input_shape, n_class, channels=(256, 256, 128), units=(656, 192), dropout=0.5):
    """The paper's kind of baseline: three 5x5 ReLU conv layers ('same') with 2x2 max-pooling
    after the first two, two ReLU FC layers, dropout, softmax. The §5 MNIST baseline's FC 328
    is widened to 656 so the budget matches CapsNet's on 40x40.

    image [batch, H, W, C] -> class probabilities [batch, n_class]. Measured (count_params)
    on 40x40 with the defaults: 10,990,170 parameters, vs CapsNet on 40x40 11,227,904 without
    its decoder (13,475,648 with it); on 28x28: 6,707,802.
    """
    x = layers.Input(shape=tuple(input_shape))
    h = x
    for i, filters in enumerate(channels):
        h = layers.Conv2D(int(filters), 5, padding='same', activation='relu', name='conv%d' % (i + 1))(h)
        if i < 2:
            h = layers.MaxPooling2D(2, name='pool%d' % (i + 1))(h)
    h = layers.Flatten(name='flatten')(h)
    for i, n in enumerate(units):
        h = layers.Dense(int(n), activation='relu', name='fc%d' % (i + 1))(h)
    h = layers.Dropout(dropout, name='dropout')(h)
    out = layers.Dense(int(n_class), activation='softmax', name='cnn')(h)
    return models.Model(x, out)


def cnn_from_args(args, input_shape, n_class):
    """--model cnn: BaselineCNN with channels (F, F, F/2), F = --conv1_filters (256: the paper's
    256, 256, 128). Returns (model, model, None): no decoder, nothing to manipulate."""
    f = args.conv1_filters
    model = BaselineCNN(input_shape, n_class, channels=(f, f, max(1, f // 2)))
    return model, model, None


def is_classifier(model):
    """True for a one-input, one-output model (the CNN) rather than a CapsNet with a decoder."""
    return len(model.inputs) == 1 and len(model.outputs) == 1


def classifier_accuracy(model, x, y, batch_size):
    """Fraction of images whose highest score is the true class; works for both model kinds."""
    y_pred = model.predict(x, batch_size=batch_size)
    if isinstance(y_pred, (list, tuple)):
        y_pred = y_pred[0]
    return float(np.mean(np.argmax(y_pred, 1) == np.argmax(y, 1)))


class StopAtAccuracy(callbacks.Callback):
    """Stops training at the end of the first epoch whose logs[monitor] >= target."""

    def __init__(self, monitor, target):
        super(StopAtAccuracy, self).__init__()
        self.monitor, self.target = monitor, target

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and value >= self.target:
            print('%s %.4f >= %.4f: stopping' % (self.monitor, value, self.target))
            self.model.stop_training = True


def validation_monitor(model):
    """The log column holding the validation accuracy of this kind of model."""
    return 'val_accuracy' if is_classifier(model) else 'val_capsnet_accuracy'


def early_stopping_callbacks(model, args):
    """EarlyStopping (--early_stopping PATIENCE) and StopAtAccuracy (--stop_at_val_acc) on the
    validation accuracy (expanded MNIST for --dataset affnist)."""
    monitor = validation_monitor(model)
    cbs = []
    if getattr(args, 'early_stopping', None) is not None:
        cbs.append(callbacks.EarlyStopping(monitor=monitor, mode='max', patience=args.early_stopping,
                                           verbose=1))
    if getattr(args, 'stop_at_val_acc', None) is not None:
        cbs.append(StopAtAccuracy(monitor, args.stop_at_val_acc))
    return cbs


def translated_batches(x_train, y_train, args, seed):
    """--dataset affnist training batches: digits re-placed at random on 40x40 every epoch."""
    return TranslatedBatches(x_train, y_train, args.batch_size, seed=seed,
                             workers=getattr(args, 'workers', 1))


def affnist_report(eval_model, expanded_acc, args):
    """Tests on the affNIST set loaded with the data (real, or 'affNIST-style (generated)'),
    prints it beside the expanded-MNIST accuracy and writes <save_dir>/affnist_results.json."""
    import json
    x, y, description = args.affnist_eval
    acc = classifier_accuracy(eval_model, x, y, args.batch_size)
    results = {'model': args.model, 'expanded_mnist_accuracy': expanded_acc,
               'expanded_mnist_images': args.expanded_test_images,
               'affnist_accuracy': acc, 'affnist_images': len(x), 'affnist_set': description,
               'affnist_generated': description == affnist_loader.GENERATED_LABEL,
               'paper': {'capsnet': {'expanded_mnist': 0.9923, 'affnist': 0.79},
                         'cnn': {'expanded_mnist': 0.9922, 'affnist': 0.66}}}
    path = os.path.join(args.save_dir, 'affnist_results.json')
    with C.atomic_write(path) as tmp:
        with open(tmp, 'w') as f:
            json.dump(results, f, indent=2)
    print('%-8s expanded MNIST: %.4f   %s: %.4f   (paper %s: %.2f%% / %.0f%%)'
          % (args.model, expanded_acc, description, acc, args.model,
             100 * results['paper'].get(args.model, {}).get('expanded_mnist', float('nan')),
             100 * results['paper'].get(args.model, {}).get('affnist', float('nan'))))
    print('Results saved to %s' % path)


MODELS['cnn'] = cnn_from_args
DATASETS['affnist'] = affnist_loader.expanded_mnist
TRAIN_BATCHES = {'affnist': translated_batches}   # dataset -> batches(x, y, args, seed); default shifts
EXTRA_TESTS = {'affnist': affnist_report}         # dataset -> report(eval_model, test_acc, args)


def prepare_save_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError('cannot create --save_dir %s: %s' % (path, e.strerror or e))
    if not os.access(path, os.W_OK):
        raise UserError('--save_dir %s is not writable' % path)


def run(args):
    if args.resume and (args.testing or args.weights is not None):
        raise UserError('--resume continues training from --save_dir; it cannot be combined '
                        'with -t or -w')
    prepare_save_dir(args.save_dir)
    C.set_precision(getattr(args, 'mixed_precision', 'off'))  # before any model is built
    scope = C.distribution_scope(args.multi_gpu, args.batch_size)
    if args.seed is not None:
        C.set_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = DATASETS[args.dataset](args)
    with scope as parallel:
        run_models(args, (x_train, y_train), (x_test, y_test), parallel)


def run_models(args, train_data, test_data, parallel):
    """Builds the --model, then trains and tests it, or tests and manipulates (-t)."""
    (x_train, y_train), (x_test, y_test) = train_data, test_data
    try:
        model, eval_model, manipulate_model = MODELS[args.model](
            args, x_train.shape[1:], y_train.shape[1])
    except ValueError as e:
        raise UserError('cannot build this architecture: %s' % e)
    model.summary()
    if args.weights is not None:
        if C.load_weights_h5(model, args.weights) == 'full-model':
            print('note: %s is a full-model file: loaded its weights only (its model config '
                  'is ignored, nothing in it is executed)' % args.weights)
        print('Loaded weights from %s' % args.weights)
    initial_epoch = resume_weights(model, args.save_dir) if args.resume else 0
    if not args.testing:
        train(model, eval_model, ((x_train, y_train), (x_test, y_test)), args, initial_epoch,
              parallel)
        acc = test(eval_model, (x_test, y_test), args)
    else:
        if args.weights is None:
            print('No weights are provided. Will test using random initialized weights.')
        if manipulate_model is not None:
            manipulate_latent(manipulate_model, (x_test, y_test), args)
        acc = test(eval_model, (x_test, y_test), args)
    if getattr(args, 'dataset', 'mnist') in EXTRA_TESTS:
        EXTRA_TESTS[args.dataset](eval_model, acc, args)


# ---------------------------------------------------------------- resume
def checkpoints(save_dir):
    """[(epoch, path)] of the weights-XX.h5 files in save_dir, newest first."""
    found = []
    for name in os.listdir(save_dir) if os.path.isdir(save_dir) else []:
        match = re.match(r'^weights-(\d+)\.h5$', name)
        if match:
            found.append((int(match.group(1)), os.path.join(save_dir, name)))
    return sorted(found, reverse=True)


def latest_checkpoint(save_dir):
    """(epoch, path) of the newest weights-XX.h5 in save_dir, or None."""
    found = checkpoints(save_dir)
    return found[0] if found else None


def resume_weights(model, save_dir):
    """Loads the newest loadable weights-XX.h5 of save_dir into model; returns XX (the
    number of epochs done), 0 when there is none. A damaged newest file is reported and
    skipped once (the one before it is tried); a second failure is an error."""
    for tries, (epoch, path) in enumerate(checkpoints(save_dir)):
        try:
            C.load_weights_h5(model, path)
        except UserError as e:
            if tries > 0:
                raise
            print('note: skipping %s: %s' % (path, e))
            continue
        print('Resuming after epoch %d from %s' % (epoch, path))
        return epoch
    print('note: no checkpoint (weights-XX.h5) in %s: training from epoch 1' % save_dir)
    return 0


def restore_optimizer(model, path):
    """Loads the optimizer state saved beside a checkpoint; a note (not an error) when it is
    missing or does not fit, training then goes on with a fresh optimizer."""
    if not os.path.isfile(path):
        print('note: %s not found: optimizer state (Adam moments) starts fresh' % path)
        return
    try:
        C.set_optimizer_state(model, C.load_arrays_npz(path))
    except (UserError, OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        print('note: optimizer state not restored from %s (%s): it starts fresh' % (path, e))
        return
    print('Restored optimizer state from %s' % path)


def trim_log(log_path, initial_epoch):
    """Keeps log.csv's header and its rows of epochs < initial_epoch (rewritten atomically),
    so that appending the resumed epochs gives each epoch exactly once."""
    if not os.path.isfile(log_path):
        return
    with open(log_path) as f:
        lines = f.readlines()
    if not lines:
        return
    header = next(csv.reader([lines[0]]))
    if 'epoch' not in header:
        raise UserError('%s has no epoch column: cannot resume its log' % log_path)
    column = header.index('epoch')
    kept = [lines[0]]
    for line in lines[1:]:
        row = next(csv.reader([line]), [])
        try:
            if int(float(row[column])) < initial_epoch:
                kept.append(line if line.endswith('\n') else line + '\n')
        except (IndexError, ValueError):
            continue  # a half-written last row from a crash
    if len(kept) - 1 != initial_epoch:
        print('note: %s has %d rows for the %d epochs done' % (log_path, len(kept) - 1, initial_epoch))
    with C.atomic_write(log_path) as tmp:
        with open(tmp, 'w') as f:
            f.writelines(kept)


def logged_best(log_path, column):
    """The largest finite value of `column` in log.csv (the epochs already done), or None."""
    if not os.path.isfile(log_path):
        return None
    values = []
    with open(log_path, errors='replace') as f:
        for row in csv.DictReader(f):
            try:
                values.append(float(row.get(column)))
            except (TypeError, ValueError):
                continue
    values = [v for v in values if np.isfinite(v)]
    return max(values) if values else None


# ---------------------------------------------------------------- reproduction
# Sabour et al. 2017, Table 1 (plus routing 2, the seed repo's setting): name, routings, lam_recon
TABLE1_CONFIGS = [('capsnet_r1_norecon', 1, 0.0), ('capsnet_r1_recon', 1, 0.392),
                  ('capsnet_r2_recon', 2, 0.392), ('capsnet_r3_norecon', 3, 0.0),
                  ('capsnet_r3_recon', 3, 0.392)]


def _finished(config_dir, epochs):
    log = os.path.join(config_dir, 'log.csv')
    if not (os.path.isfile(log) and os.path.isfile(os.path.join(config_dir, 'trained_model.h5'))):
        return False
    with open(log) as f:
        return sum(1 for _ in f) - 1 >= epochs


def reproduce_table1(args):
    """Trains the Table 1 configurations in turn under <save_dir>/table1/<config>/.

    A configuration already trained for --epochs is skipped, so re-running the command
    after an interruption picks up at the first unfinished one. Copies each log.csv to
    <save_dir>/table1/<config>_<E>ep.csv, then writes table1.md (paper vs ours, printed too)
    and table1.png (test error and loss curves).
    """
    root = os.path.join(args.save_dir, 'table1')
    prepare_save_dir(root)
    logs = []
    for name, routings, lam_recon in TABLE1_CONFIGS:
        config_dir = os.path.join(root, name)
        if _finished(config_dir, args.epochs):
            print('== %s: already trained for %d epochs, skipped' % (name, args.epochs))
        else:
            print('== %s: routings %d, lam_recon %g' % (name, routings, lam_recon))
            config = argparse.Namespace(**vars(args))
            config.routings, config.lam_recon, config.save_dir = routings, lam_recon, config_dir
            config.resume = args.weights is None  # picks up mid-configuration after a crash
            C.clear_session()
            run(config)
        logs.append(os.path.join(root, '%s_%dep.csv' % (name, args.epochs)))
        shutil.copyfile(os.path.join(config_dir, 'log.csv'), logs[-1])
    table = utils.results_table(logs)
    with open(os.path.join(root, 'table1.md'), 'w') as f:
        f.write(table + '\n')
    utils.plot_log(logs, os.path.join(root, 'table1.png'))
    print(table)
    print('Table and curves saved to %s (table1.md, table1.png)' % root)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        C.configure_threads()
        if args.reproduce == 'table1':
            reproduce_table1(args)
        else:
            run(args)
    except UserError as e:
        print('error: %s' % e, file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permissions, ... while writing outputs
        print('error: %s%s' % (e.strerror or e, ': %s' % e.filename if e.filename else ''),
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('error: interrupted; continue with --resume (same --save_dir)', file=sys.stderr)
        return 130
    return 0


if __name__ == '__main__':
    sys.exit(main())
