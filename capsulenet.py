"""CapsNet on MNIST (Sabour, Frosst & Hinton 2017): train, test, manipulate.

Usage:
    python capsulenet.py                       # train 50 epochs, routings 3
    python capsulenet.py --routings 1 --epochs 10
    python capsulenet.py -t -w result/trained_model.h5            # test
    python capsulenet.py -t -w result/trained_model.h5 --digit 5  # manipulate capsule dims

Runs on keras==2.2.4 (TensorFlow 1.x) and on Keras 3 (TensorFlow, JAX or PyTorch backend;
pick it with KERAS_BACKEND). Outputs go to --save_dir (default ./result).
"""
import argparse
import os
import shutil
import sys
import time

import numpy as np

import compat as C
from compat import layers, models, callbacks, UserError
from capsulelayers import CapsuleLayer, PrimaryCap, Length, Mask
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
    model.compile(optimizer=C.adam(lr), loss=[margin_loss, 'mse'],
                  loss_weights=[1., lam_recon], metrics={'capsnet': [accuracy]})


# ---------------------------------------------------------------- data
class ShiftedBatches(C.Sequence):
    """Training batches ([images, labels], [labels, images]) with random shifts.

    Reshuffled every epoch; shifts up to max_shift pixels (zero fill), seeded. Batch
    `index` of epoch e depends on (seed, e, index) only, not on the order or number of
    times Keras asks for batches (it peeks at batch 0; distributed runs prefetch).
    """

    def __init__(self, x, y, batch_size, max_shift, seed=None):
        super(ShiftedBatches, self).__init__()
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.max_shift = max_shift
        self.seed = np.random.randint(2 ** 31) if seed is None else int(seed) % 2 ** 31
        self.epoch = 0
        self.order = np.random.RandomState([self.seed, 0]).permutation(len(x))

    def __len__(self):
        return int(np.ceil(len(self.x) / float(self.batch_size)))

    def __getitem__(self, index):
        idx = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        rng = np.random.RandomState([self.seed, self.epoch, index + 1])
        x = utils.random_shift(self.x[idx], self.max_shift, rng)
        y = self.y[idx]
        return C.pack_batch([x, y], [y, x])

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.order = np.random.RandomState([self.seed, epoch]).permutation(len(self.x))

    def on_epoch_end(self):
        # keras 2.2.4's enqueuer calls this between its passes; Keras 3 calls it at moments
        # that vary with prefetching, so there BatchesEpoch sets the epoch instead.
        if not C.KERAS3:
            self.set_epoch(self.epoch + 1)


class BatchesEpoch(callbacks.Callback):
    """Tells ShiftedBatches (Keras 3) which epoch begins, before its batches are read."""

    def __init__(self, batches):
        super(BatchesEpoch, self).__init__()
        self.batches = batches

    def on_epoch_begin(self, epoch, logs=None):
        self.batches.set_epoch(epoch)


# ---------------------------------------------------------------- callbacks
class WeightsCheckpoint(callbacks.Callback):
    """Writes weights-{epoch:02d}.h5 (legacy Keras HDF5 layout, atomic) after each epoch."""

    def __init__(self, save_dir, template=None):
        super(WeightsCheckpoint, self).__init__()
        self.save_dir = save_dir
        self.template = template  # the single-device model behind a multi_gpu_model

    def on_epoch_end(self, epoch, logs=None):
        path = os.path.join(self.save_dir, 'weights-%02d.h5' % (epoch + 1))
        C.save_weights_h5(self.template or self.model, path)


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
def train(model, eval_model, data, args, parallel=lambda m: m):
    """Trains `model` on data ((x_train, y_train), (x_test, y_test)); writes to args.save_dir.

    parallel(model) is the model actually compiled and fitted (see C.distribution_scope)."""
    (x_train, y_train), (x_test, y_test) = data
    template, model = model, parallel(model)
    compile_model(model, args.lr, args.lam_recon)
    log_path = os.path.join(args.save_dir, 'log.csv')
    cbs = [callbacks.LearningRateScheduler(lambda epoch: args.lr * (args.lr_decay ** epoch)),
           EpochStats(),
           callbacks.CSVLogger(log_path),
           WeightsCheckpoint(args.save_dir, template)]
    if args.debug:
        cbs.append(C.tensorboard(os.path.join(args.save_dir, 'tensorboard-logs'), args.batch_size))
    max_shift = int(args.shift_fraction * x_train.shape[1])
    batches = ShiftedBatches(x_train, y_train, args.batch_size, max_shift, seed=args.seed)
    if C.KERAS3:
        cbs.append(BatchesEpoch(batches))
    C.fit(model, batches, epochs=args.epochs, callbacks_list=cbs,
          validation_data=([x_test, y_test], [y_test, x_test]))
    weights_path = os.path.join(args.save_dir, 'trained_model.h5')
    C.save_weights_h5(template, weights_path)
    print('Trained model saved to %s' % weights_path)
    utils.plot_log(log_path, os.path.join(args.save_dir, 'log.png'))
    return model


def test(eval_model, data, args):
    """Prints test accuracy / error, writes real_and_recon.png. Returns the accuracy."""
    x_test, y_test = data
    y_pred, x_recon = eval_model.predict(x_test, batch_size=args.batch_size)
    acc = float(np.mean(np.argmax(y_pred, 1) == np.argmax(y_test, 1)))
    print('Test accuracy: %.4f  (error %.2f%%) on %d images' % (acc, 100 * (1 - acc), len(x_test)))
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
    p = OneLineParser(description='Capsule Network on MNIST (train, test, manipulate).')
    p.add_argument('--model', default='capsnet', choices=sorted(MODELS), help='which network')
    p.add_argument('--dataset', default='mnist', choices=sorted(DATASETS), help='which data')
    p.add_argument('--epochs', default=50, type=_bounded(int, 1), help='training epochs')
    p.add_argument('--batch_size', default=100, type=_bounded(int, 1), help='images per step')
    p.add_argument('--lr', default=0.001, type=_bounded(float, 0, low_open=True),
                   help='initial learning rate (Adam)')
    p.add_argument('--lr_decay', default=0.9, type=_bounded(float, 0, 1, low_open=True),
                   help='learning rate multiplier per epoch: lr_e = lr * lr_decay^e')
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
    p.add_argument('--reproduce', default=None, choices=['table1'],
                   help="train the paper's Table 1 configurations (routings 1/2/3, with and "
                        "without reconstruction) in turn under <save_dir>/table1/ (resumable) "
                        "and print paper vs ours")
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


# --model and --dataset choices: name -> builder(args, input_shape, n_class) / loader(args)
MODELS = {'capsnet': capsnet_from_args}
DATASETS = {'mnist': mnist_from_args}


def prepare_save_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError('cannot create --save_dir %s: %s' % (path, e.strerror or e))
    if not os.access(path, os.W_OK):
        raise UserError('--save_dir %s is not writable' % path)


def run(args):
    prepare_save_dir(args.save_dir)
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
        C.load_weights_h5(model, args.weights)
        print('Loaded weights from %s' % args.weights)
    if not args.testing:
        train(model, eval_model, ((x_train, y_train), (x_test, y_test)), args, parallel)
        test(eval_model, (x_test, y_test), args)
    else:
        if args.weights is None:
            print('No weights are provided. Will test using random initialized weights.')
        manipulate_latent(manipulate_model, (x_test, y_test), args)
        test(eval_model, (x_test, y_test), args)


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
    return 0


if __name__ == '__main__':
    sys.exit(main())
