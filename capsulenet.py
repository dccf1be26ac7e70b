"""CapsNet (Sabour, Frosst & Hinton 2017): the models, their losses and the command line.

Usage:
    python capsulenet.py                       # train 50 epochs, routings 3
    python capsulenet.py --routings 1 --epochs 10
    python capsulenet.py -t -w result/trained_model.h5            # test
    python capsulenet.py -t -w result/trained_model.h5 --digit 5  # manipulate capsule dims
    python capsulenet.py --dataset affnist --model cnn   # §5.2: translated MNIST -> affNIST
    python capsulenet.py --dataset multimnist            # §6: two overlapping digits, 36x36
    python capsulenet.py --dataset smallnorb --model efficient --smallnorb_dir data/smallnorb
    python capsulenet.py --dataset cifar10 --cifar10_dir data/cifar10  # §7: the paper's network
    python capsulenet.py -t -w a.h5 -w b.h5 --dataset cifar10  # ensemble: mean capsule lengths
    python capsulenet.py --dataset folder --data_dir my_images    # my_images/{train,test}/<class>/

This file: the model builders (CapsNet, Efficient-CapsNet, the baseline CNN), one registry
of them (MODELS), the losses and the CLI, whose flags become the settings of `run` at `main`
(outputs go to --save_dir); run() dispatches to _train or _test, each a short sequence of
steps (run folder, backend, data, models, fit, report). Errors of the Keras seam are worded
with their CLI flag here (flag_named). Data sets: datasets.py (one record each: the network a
data set builds, its digits, its batches); batches: batches.py; training: training.py; tests
and reports: evaluation.py; Table 1: reproduce.py. keras==2.2.4 or Keras 3 (KERAS_BACKEND
picks).
"""
if __name__ == '__main__':  # before the imports below, which take seconds (TensorFlow)
    import safeio
    safeio.interrupt_is_one_line()

import argparse
import collections
import contextlib
import inspect
import math
import sys

import numpy as np

import batches
import compat as C
import datasets
import evaluation
import modelcard
import reproduce
import runsetup
import training
from capsulelayers import CapsuleLayer, PrimaryCap, Length, Mask, EfficientPrimaryCap, FCCaps
from compat import layers, models
from h5weights import load_weights_h5
from runfolder import RunFolder
from safeio import OneLineParser, UserError, run_cli


# ---------------------------------------------------------------- models
def CapsNet(input_shape, n_class, routings=3, conv1_filters=256, conv1_kernel=9,
            primary_channels=32, primary_dim=8, primary_kernel=9, primary_strides=2,
            digit_dim=16, decoder_units=(512, 1024), digits=1, leaky_routing=False):
    """Builds the three CapsNet models sharing one set of weights (see `capsule_models`).

    input_shape: [H, W, C] of the images; n_class: number of digit capsules; digits: digits
    per image (2: MultiMNIST, one reconstruction per digit); leaky_routing: the paper's
    "none-of-the-above" routing class (CapsuleLayer's leaky, CIFAR-10). Defaults are the
    paper's MNIST network: 8,215,568 parameters; on 36x36 MultiMNIST 11,361,808.
    """
    x = layers.Input(shape=tuple(input_shape))
    conv1 = layers.Conv2D(filters=conv1_filters, kernel_size=conv1_kernel, strides=1,
                          padding='valid', activation='relu', name='conv1')(x)
    primarycaps = PrimaryCap(conv1, dim_capsule=primary_dim, n_channels=primary_channels,
                             kernel_size=primary_kernel, strides=primary_strides, padding='valid')
    digitcaps = CapsuleLayer(num_capsule=n_class, dim_capsule=digit_dim, routings=routings,
                             leaky=leaky_routing, name='digitcaps')(primarycaps)
    return capsule_models(x, digitcaps, input_shape, dense_decoder(decoder_units), digits)


def EfficientCapsNet(input_shape, n_class, conv_filters=(32, 64, 64, 128),
                     conv_kernels=(5, 3, 3, 3), conv_strides=(1, 1, 1, 2), primary_kernel=9,
                     primary_strides=1, primary_dim=8, digit_dim=16, decoder_units=(512, 1024),
                     bn_momentum=0.99, block='relu_bn', decoder=None, digits=1):
    """Efficient-CapsNet (Mazzia et al. 2021): the same three models as `CapsNet`.

    Conv stack (valid padding, each conv followed by `block`) -> depthwise primary
    capsules [batch, 16, 8] -> FCCaps self-attention routing [batch, n_class, digit_dim]
    -> lengths. block: 'relu_bn' (ReLU, BatchNorm: MNIST, MultiMNIST) or 'leaky_in'
    (LeakyReLU, instance normalisation: smallNORB). decoder: a decoder builder (default
    dense_decoder(decoder_units)). Defaults: the MNIST network, 161,824 trainable parameters
    without the decoder; smallnorb.EFFICIENT and multimnist.EFFICIENT hold those data sets'.
    """
    x = layers.Input(shape=tuple(input_shape))
    h = x
    for i, (f, k, st) in enumerate(zip(conv_filters, conv_kernels, conv_strides)):
        h = conv_block(h, int(f), int(k), int(st), i + 1, block, bn_momentum)
    primarycaps = EfficientPrimaryCap(h, dim_capsule=primary_dim, kernel_size=primary_kernel,
                                      strides=primary_strides)
    digitcaps = FCCaps(n_class, digit_dim, name='digitcaps')(primarycaps)
    return capsule_models(x, digitcaps, input_shape, decoder or dense_decoder(decoder_units),
                          digits)


def conv_block(h, filters, kernel, strides, index, block, bn_momentum=0.99):
    """One conv of Efficient-CapsNet's stack ('valid', He normal): [batch, H, W, C] ->
    [batch, H', W', filters]. 'relu_bn': ReLU then BatchNorm (bn<index>); 'leaky_in': linear
    conv, LeakyReLU (slope 0.3, Keras' default, as the reference) then instance norm (in<index>)."""
    leaky = block == 'leaky_in'
    h = layers.Conv2D(filters, kernel, strides=strides, padding='valid',
                      activation=None if leaky else 'relu', kernel_initializer='he_normal',
                      name='conv%d' % index)(h)
    if leaky:
        h = layers.LeakyReLU(name='leaky%d' % index)(h)
        return C.instance_norm(filters, name='in%d' % index)(h)
    return layers.BatchNormalization(momentum=bn_momentum, name='bn%d' % index)(h)


def capsule_models(x, digitcaps, input_shape, decoder, digits=1):
    """The lengths, the decoder (named 'decoder') and the three models on digit capsules.

    x: the image input [batch, H, W, C]; digitcaps: [batch, n_class, digit_dim]; decoder:
    builder(input_dim, input_shape) -> a model [batch, input_dim] -> [batch, H, W, C];
    digits: 1, or 2 (MultiMNIST: the decoder runs once per digit).
    Returns (train_model, eval_model, manipulate_model):
      train_model: [image, label [batch, n_class]]
                   -> [lengths [batch, n_class], reconstruction [batch, H, W, C]];
                   digits=2: [image, label_1, label_2] (one-hot each)
                   -> [lengths, reconstruction masked by label_1, the same by label_2]
      eval_model: image -> [lengths, reconstruction of the longest capsule (digits=2: and of
                  the second longest)]
      manipulate_model: [image, label, noise [batch, n_class, digit_dim]] -> reconstruction
    """
    n_class, digit_dim = C.int_shape(digitcaps)[1:]
    out_caps = Length(name='capsnet')(digitcaps)
    decoder = decoder(digit_dim * n_class, tuple(input_shape))
    labels = [layers.Input(shape=(n_class,)) for _ in range(digits)]
    # training: each true label's capsule; prediction: the longest (then second longest)
    by_label = [Mask(name='mask' if i == 0 else 'mask_%d' % (i + 1))([digitcaps, y])
                for i, y in enumerate(labels)]
    by_rank = [Mask(rank=i, name='mask_longest' if i == 0 else 'mask_rank_%d' % (i + 1))(digitcaps)
               for i in range(digits)]

    train_model = models.Model([x] + labels, [out_caps] + _reconstructions(decoder, by_label))
    eval_model = models.Model(x, [out_caps] + _reconstructions(decoder, by_rank))
    noise = layers.Input(shape=(n_class, digit_dim))
    noised_digitcaps = layers.Add()([digitcaps, noise])
    masked_noised_y = Mask(name='mask_noised')([noised_digitcaps, labels[0]])
    manipulate_model = models.Model([x, labels[0], noise], decoder(masked_noised_y))
    return train_model, eval_model, manipulate_model


def _reconstructions(decoder, masked):
    """decoder applied to each masked capsule vector; outputs after the first pass through an
    identity layer named decoder_<k>, so each output (and its loss column) has its own name."""
    out = [decoder(m) for m in masked]
    return out[:1] + [layers.Activation('linear', name='decoder_%d' % (k + 2))(r)
                      for k, r in enumerate(out[1:])]


def dense_decoder(units=(512, 1024)):
    """The paper's decoder, as a builder for capsule_models: masked capsules [batch, input_dim]
    -> FC units (ReLU) -> FC H*W*C (sigmoid) -> [batch, H, W, C], a Sequential 'decoder'."""
    def build(input_dim, input_shape):
        n_pixels = int(np.prod(input_shape))
        decoder = C.dense_sequential(list(units) + [n_pixels],
                                     ['relu'] * len(units) + ['sigmoid'],
                                     input_dim=input_dim, name='decoder')
        decoder.add(layers.Reshape(target_shape=tuple(input_shape), name='out_recon'))
        return decoder
    return build


def smallnorb_decoder(input_dim, input_shape):
    """Efficient-CapsNet's smallNORB decoder (its generator_graph), a functional 'decoder':
    [batch, input_dim] -> Dense 64 (linear) -> [8, 8, 1] -> three times (bilinear x2, Conv
    3x3 'valid', leaky ReLU 0.2 as tf.nn.leaky_relu) with 64, 128, 128 filters: 16 -> 14,
    28 -> 26, 52 -> 50 -> Conv 2@3x3 sigmoid -> [batch, 48, 48, 2] (input_shape must be that)."""
    if tuple(input_shape) != (48, 48, 2):
        raise ValueError('the smallNORB decoder makes 48x48x2 images, the input is %s'
                         % 'x'.join(str(d) for d in input_shape))
    z = layers.Input(shape=(int(input_dim),))
    h = layers.Reshape((8, 8, 1), name='decoder_reshape')(layers.Dense(64, name='decoder_fc')(z))
    for i, filters in enumerate((64, 128, 128)):
        h = C.upsampling_bilinear(name='decoder_up%d' % (i + 1))(h)
        h = layers.Conv2D(filters, 3, padding='valid', name='decoder_conv%d' % (i + 1))(h)
        h = layers.LeakyReLU(0.2, name='decoder_leaky%d' % (i + 1))(h)
    out = layers.Conv2D(2, 3, padding='valid', activation='sigmoid', name='decoder_out')(h)
    return models.Model(z, out, name='decoder')


def BaselineCNN(input_shape, n_class, channels, units, pools, dropout=0.5):
    """The paper's kind of baseline: three 5x5 ReLU conv layers ('same') of `channels`, a 2x2
    max-pool after each of the first `pools` of them, ReLU FC layers of `units`, dropout,
    softmax.

    image [batch, H, W, C] -> class probabilities [batch, n_class].
    """
    x = layers.Input(shape=tuple(input_shape))
    h = x
    for i, filters in enumerate(channels):
        h = layers.Conv2D(int(filters), 5, padding='same', activation='relu',
                          name='conv%d' % (i + 1))(h)
        if i < int(pools):
            h = layers.MaxPooling2D(2, name='pool%d' % (i + 1))(h)
    h = layers.Flatten(name='flatten')(h)
    for i, n in enumerate(units):
        h = layers.Dense(int(n), activation='relu', name='fc%d' % (i + 1))(h)
    h = layers.Dropout(dropout, name='dropout')(h)
    out = layers.Dense(int(n_class), activation='softmax', name='cnn')(h)
    return models.Model(x, out)


def CNN(input_shape, n_class, conv1_filters=256, pools=2, fc1_units=656):
    """--model cnn: BaselineCNN with channels (F, F, F/2), F = conv1_filters (256: the paper's
    256, 256, 128), `pools` max-pools and FC fc1_units then 192. Returns (model, model, None):
    no decoder, nothing to manipulate.

    The defaults are §5.2's affNIST CNN, "a similar number of parameters" to CapsNet (FC 328
    widened to 656): on 40x40 10,990,170 parameters, vs CapsNet on 40x40 11,227,904 without
    its decoder (13,475,648 with it); on 28x28 6,707,802, vs CapsNet's 6,804,224. Table 1's
    MNIST baseline, pools=0 and fc1_units=328 (datasets.MNIST_CNN, what --dataset mnist
    builds): 35,445,522 parameters, the paper's 35.4M. Counted with count_params.
    """
    f = conv1_filters
    model = BaselineCNN(input_shape, n_class, channels=(f, f, max(1, f // 2)),
                        units=(fc1_units, 192), pools=pools)
    return model, model, None


def trainable_count(model, exclude=('decoder',)):
    """Number of trainable parameters in model's layers, leaving out the named ones."""
    return int(sum(np.prod(C.int_shape(w)) for layer in model.layers
                   if layer.name not in exclude for w in layer.trainable_weights))


# ---------------------------------------------------------------- losses
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


def two_digit_accuracy(y_true, y_pred):
    """The paper's MultiMNIST metric: 1 where the two longest capsules are exactly the two
    digits of the two-hot y_true [batch, n_class], i.e. every true class's score beats every
    other class's; y_pred: lengths (or probabilities) in [0, 1] -> [batch].
    NumPy reference: multimnist.two_digit_correct."""
    # float32: a mixed-precision CNN's probabilities may come in 16 bits
    y_true, y_pred = C.cast(y_true, 'float32'), C.cast(y_pred, 'float32')
    # scores lie in [0, 1]: +-2 takes a class out of the other side's min / max
    shortest_true = C.reduce_min(y_pred + 2. * (1. - y_true), -1)
    longest_other = C.reduce_max(y_pred - 2. * y_true, -1)
    return C.cast(shortest_true > longest_other, C.floatx())


def _named(fn, name):
    """fn under another __name__: Keras names a metric's log column after it."""
    def metric(y_true, y_pred):
        return fn(y_true, y_pred)
    metric.__name__ = name
    return metric


def accuracy_metric(digits=1):
    """The metric logged as `accuracy` (capsnet_accuracy / accuracy in log.csv, so plot and
    table read every data set alike): one digit per image, or the two-digit metric."""
    return accuracy if digits == 1 else _named(two_digit_accuracy, 'accuracy')


# ---------------------------------------------------------------- the registry
# kind 'capsule': [image, label] -> [lengths, reconstruction], margin + lam_recon * MSE loss;
# kind 'classifier': image -> class probabilities, cross-entropy. flags: the model flags of
# the CLI that size this model (any other given is an error); recipe: its training defaults.
ModelSpec = collections.namedtuple('ModelSpec', 'builder kind loss monitor flags recipe')
ARCH_FLAGS = ('conv1_filters', 'conv1_kernel', 'primary_channels', 'primary_dim',
              'primary_kernel', 'primary_strides', 'digit_dim')
CNN_FLAGS = ('pools', 'fc1_units')
CAPSNET_RECIPE = dict(epochs=50, batch_size=100, lr=0.001, lr_decay=0.9, lr_min=0.,
                      augment='shift', lam_recon=0.392)
MODELS = {
    'capsnet': ModelSpec(CapsNet, 'capsule', [margin_loss, 'mse'], 'val_capsnet_accuracy',
                         ('routings', 'lam_recon') + ARCH_FLAGS, CAPSNET_RECIPE),
    'efficient': ModelSpec(EfficientCapsNet, 'capsule', [margin_loss, 'mse'],
                           'val_capsnet_accuracy', ('lam_recon',),
                           dict(epochs=150, batch_size=16, lr=5e-4, lr_decay=0.97, lr_min=5e-5,
                                augment='efficient', lam_recon=0.392)),
    'cnn': ModelSpec(CNN, 'classifier', 'categorical_crossentropy', 'val_accuracy',
                     ('conv1_filters',) + CNN_FLAGS, dict(CAPSNET_RECIPE, lam_recon=None)),
}
MODEL_FLAGS = ('routings', 'lam_recon') + ARCH_FLAGS + CNN_FLAGS

# decoders a data set's network may name (datasets.DATASETS[...].networks, decoder=<name>)
DECODERS = {'smallnorb_decoder': smallnorb_decoder}


def dataset_network(model, dataset):
    """The builder keywords of the network --dataset builds for --model (its record's
    networks: the paper's CapsNet for CIFAR-10 / SVHN, Efficient-CapsNet's own for smallNORB
    and MultiMNIST); {} for the defaults. A named decoder stays a name (its note reads so)."""
    return dict(datasets.DATASETS[dataset].networks.get(model, {}))


def smallest_input(kernels, strides):
    """The smallest image side a stack of 'valid' windows (kernel, stride), applied in order,
    maps to at least one position: sizes run backwards from 1 as (size - 1) * stride + kernel."""
    size = 1
    for kernel, stride in reversed(list(zip(kernels, strides))):
        size = (size - 1) * int(stride) + int(kernel)
    return size


def receptive_field(model, options):
    """(smallest image side MODELS[model] built with options takes, its windows in words,
    what to change). CapsNet: conv1 then the primary capsules' conv, both 'valid';
    Efficient-CapsNet: its conv stack then the depthwise primary capsules; CNN: its 2x2
    max-pools ('same' convs)."""
    spec = MODELS[model]
    args = {k: p.default for k, p in inspect.signature(spec.builder).parameters.items()}
    args.update(options)
    if model == 'capsnet':
        kernels = (args['conv1_kernel'], args['primary_kernel'])
        strides = (1, args['primary_strides'])
        words = 'conv1 %dx%d, primary capsules %dx%d stride %d' % (
            kernels[0], kernels[0], kernels[1], kernels[1], strides[1])
        return smallest_input(kernels, strides), words, \
            'lower --conv1_kernel / --primary_kernel / --primary_strides'
    if model == 'efficient':
        kernels = tuple(args['conv_kernels']) + (args['primary_kernel'],)
        strides = tuple(args['conv_strides']) + (args['primary_strides'],)
        words = 'convs %s, depthwise primary capsules %d' % (
            ', '.join('%d/%d' % ks for ks in zip(kernels[:-1], strides[:-1])), kernels[-1])
        return smallest_input(kernels, strides), words, 'use --model capsnet or cnn'
    pools = int(args['pools'])
    return (smallest_input((2,) * pools, (2,) * pools), '%d 2x2 max-pools' % pools,
            'use larger images')


def check_input_size(model, input_shape, options):
    """UserError in one line when images of input_shape [H, W, C] are smaller than what
    MODELS[model] with options (its keywords) takes, naming that size and what to change."""
    smallest, words, change = receptive_field(model, options)
    if min(input_shape[:2]) < smallest:
        raise UserError('images of %dx%d are too small for --model %s as set (%s): it takes at '
                        'least %dx%d; %s, or use larger images'
                        % (input_shape[0], input_shape[1], model, words, smallest, smallest,
                           change))


def build_models(model, input_shape, n_class, dataset='mnist', **options):
    """(train_model, eval_model, manipulate_model or None) of MODELS[model] sized by options
    (its `flags`, e.g. routings=1, conv1_filters=64; the rest are the paper's), in the form
    `dataset` needs: the paper's (CapsNet) or Efficient-CapsNet's own network for it
    (dataset_network), two digits for MultiMNIST (its record's digits). UserError when the
    images are too small for it."""
    options = {k: v for k, v in options.items() if k != 'lam_recon'}
    options = dict(dataset_network(model, dataset), **options)
    check_input_size(model, input_shape, options)
    if isinstance(options.get('decoder'), str):
        options['decoder'] = DECODERS[options['decoder']]
    digits = datasets.DATASETS[dataset].digits
    if MODELS[model].kind == 'capsule' and digits != 1:
        options['digits'] = digits
    try:
        return MODELS[model].builder(tuple(input_shape), int(n_class), **options)
    except ValueError as e:
        raise UserError('cannot build this architecture: %s' % e)


def compile_model(model, lr, lam_recon=0.392, spec=None, digits=1, xla='auto'):
    """Adam(lr) and the loss of spec's kind (default: capsnet's). Capsule models: margin
    loss + lam_recon * MSE of the reconstruction; digits=2 (MultiMNIST): each digit's
    reconstruction MSE weighs lam_recon / 2. The accuracy column: accuracy_metric(digits).
    xla: --xla ('auto' or 'on': runsetup.xla_compile_options)."""
    spec = spec or MODELS['capsnet']
    metric, options = accuracy_metric(digits), runsetup.xla_compile_options(xla)
    if spec.kind == 'classifier':  # no decoder: softmax + cross-entropy
        model.compile(optimizer=C.adam(lr), loss=spec.loss, metrics=[metric], **options)
    else:
        losses = list(spec.loss) + [spec.loss[-1]] * (digits - 1)
        model.compile(optimizer=C.adam(lr), loss=losses, metrics={'capsnet': [metric]},
                      loss_weights=[1.] + [lam_recon / digits] * digits, **options)
    runsetup.check_xla(model, options)


# ---------------------------------------------------------------- run
# run()'s settings, the CLI's flags but the model's and the data set's own, and their
# defaults (the CLI gives them all; --reproduce table1 passes on its own)
RUN_DEFAULTS = dict(
    model='capsnet', dataset='mnist', save_dir='./result', testing=False, weights=None,
    resume=False, overwrite=False, seed=None, multi_gpu=0, epochs=50, batch_size=100, lr=0.001,
    lr_decay=0.9, lr_min=0., augment='shift', shift_fraction=0.1, lam_recon=0.392, workers=1,
    mixed_precision='off', xla='auto', keep_checkpoints=2, early_stopping=None,
    stop_at_val_acc=None, debug=False, digit=5, data_dir=None, train_samples=None,
    test_samples=None, summary=False, validation_split=0)
# the data a run works on: train (x, y), the test Split, the validation Split (None when
# testing) and the extra evaluation set (affNIST) or None
RunData = collections.namedtuple('RunData', 'train test validation extra')


def run(**settings):
    """Trains then tests settings['model'] on settings['dataset'] (or, testing=True, tests
    and manipulates the weights given). settings: RUN_DEFAULTS' keys (the CLI's flags), the
    model's flags (MODELS[model].flags, e.g. routings) and the data set's (its record's
    flags, e.g. affnist_dir). validation_split N > 0: the last N training images validate
    (log.csv's val_ columns, best_model.h5, early stopping) and the test set is used once, at
    the end (test_results.json); 0: the test set validates, as the seed repo does. weights:
    one weights file, or with testing a list of them: an ensemble, tested on the mean of
    their class scores (capsule lengths). Ctrl-C becomes training.Interrupted, which tells
    whether save_dir holds a checkpoint to continue from."""
    s = _settings(settings)
    try:
        _check_flags(s)
        (_test if s.testing else _train)(s, *_prepared(s))
    except training.Interrupted:
        raise
    except KeyboardInterrupt:
        raise training.Interrupted(s.save_dir, s.testing)


def _settings(settings):
    """run()'s settings as a namespace: RUN_DEFAULTS' keys, data_options (the data set's
    flags given) and arch (the rest: the model's flags); _check_flags adds members."""
    s = argparse.Namespace(**dict(RUN_DEFAULTS, **{k: v for k, v in settings.items()
                                                   if k in RUN_DEFAULTS}))
    own = datasets.DATASETS[s.dataset].flags
    s.data_options = {k: v for k, v in settings.items() if k in own}
    s.arch = {k: v for k, v in settings.items() if k not in RUN_DEFAULTS and k not in own}
    return s


def _check_flags(s):
    """UserError for flags that do not go together, before anything is written or loaded;
    sets s.weights, s.members (ensemble_members)."""
    s.weights, s.members = ensemble_members(s.weights, s.testing)
    if s.resume and (s.testing or s.weights is not None or s.overwrite):
        raise UserError('--resume continues training from --save_dir; it cannot be combined '
                        'with -t, -w or --overwrite')
    if s.testing and s.validation_split:
        raise UserError('--validation_split holds out training images for training; -t '
                        'tests the weights given on the test set')
    if s.debug and not s.testing:
        runsetup.check_tensorboard()


def _prepared(s):
    """(MODELS[s.model], the RunFolder, the distribution scope, the RunData), in the order
    that fails fast: the folder's checks and the backend's before the data are loaded."""
    spec = MODELS[s.model]
    worker = runsetup.multi_worker_task()  # TF_CONFIG: one of several machines
    folder = _run_folder(s, spec, worker)
    scope = _backend(s, worker)
    return spec, folder, scope, _data(s)


def _train(s, spec, folder, scope, data):
    """Trains s.model on s.dataset in the folder (a fresh run, --resume, or -w to fine-tune),
    then tests it (and, with --validation_split, reports the test set once)."""
    with scope as parallel:
        train_model, eval_model, _ = _models(s, data.test)
        with runsetup.out_of_memory_hint('training', _memory_flags(s)):
            fitted = _fit(s, spec, folder, train_model, parallel, data)
            _report(s, spec, eval_model, data, folder, None)
            if s.validation_split:  # last: it loads best_model.h5's weights
                evaluation.held_out_report(
                    fitted, train_model, datasets.validation_data(spec.kind, data.test),
                    s.batch_size, folder, spec.monitor,
                    dict(validation_split=s.validation_split, train_images=len(data.train[0]),
                         test_images=len(data.test.x)))


def _test(s, spec, folder, scope, data):
    """Tests the weights given (-w, several: their ensemble) on s.dataset's test set and
    draws manipulate-<digit>.png."""
    x_test, y_test = data.test.x, data.test.y
    with scope:
        train_model, eval_model, manipulate_model = _models(s, data.test)
        members = s.members and ((lambda path: load_weights_h5(train_model, path)), s.members)
        with runsetup.out_of_memory_hint('testing', _memory_flags(s)):
            if s.weights is None:
                print('No weights are provided. Will test using random initialized weights.')
            if manipulate_model is not None and s.digit < y_test.shape[1]:
                evaluation.manipulate_latent(manipulate_model, x_test, y_test, s.digit, s.seed,
                                             folder.path)
            elif manipulate_model is not None:
                print('note: no manipulate-%d.png: --digit %d is not a class of --dataset %s '
                      '(0..%d)' % (s.digit, s.digit, s.dataset, y_test.shape[1] - 1))
            _report(s, spec, eval_model, data, folder, members)


def _run_folder(s, spec, worker):
    """The RunFolder this process writes (a non-chief worker's: a temporary one), prepared
    and checked before the data are loaded (fail fast): --resume continues the run there or
    refuses, a fresh run refuses an earlier run unless --overwrite."""
    save_dir = s.save_dir if s.testing else training.worker_save_dir(s.save_dir, worker,
                                                                     s.resume)
    folder = RunFolder(save_dir)
    folder.prepare()
    folder.refuse_links(s.testing)
    if s.resume:  # continue the run there, or refuse: never a fresh run over it
        training.check_resumable(folder, spec.monitor)
        training.check_validation_split(folder, s.validation_split)  # validate as it did
    elif not s.testing:
        training.refuse_earlier_run(folder, s.overwrite)
    return folder


def _backend(s, worker):
    """Sets the precision and the seed and checks --xla, before any model is built; returns
    the distribution scope (C.distribution_scope)."""
    with flag_named('--mixed_precision %s' % s.mixed_precision):
        C.set_precision(s.mixed_precision)
    # before the data are loaded: an --xla that cannot hold fails fast
    runsetup.xla_compile_options(s.xla, s.seed is not None, s.multi_gpu > 1 or worker is not None,
                                 s.testing)
    with flag_named('--multi_gpu %d' % s.multi_gpu if s.multi_gpu > 1 else None):
        scope = C.distribution_scope(s.multi_gpu, s.batch_size, worker,
                                     restart='start every worker again with --resume')
    if s.seed is not None:
        C.set_seed(s.seed)
    return scope


@contextlib.contextmanager
def flag_named(flag):
    """A UserError of the Keras seam (compat), which speaks plain words, worded with the CLI
    flag that asked for it: 'flag: message'. flag None: left as it is."""
    try:
        yield
    except UserError as e:
        if flag is None:
            raise
        raise UserError('%s: %s' % (flag, e))


def _data(s):
    """The run's RunData from s.dataset's loader; with --validation_split the last training
    images held out as the validation set, else the test set validates (a note says so)."""
    train, test, extra = datasets.DATASETS[s.dataset].loader(
        data_dir=s.data_dir, train_samples=s.train_samples, test_samples=s.test_samples,
        **s.data_options)
    test = datasets.as_split(test)
    if s.testing:
        validation = None
    elif s.validation_split:
        train, validation = datasets.hold_out(s.dataset, train, s.validation_split,
                                              **s.data_options)
        print('Validation: the last %d training images, held out (log.csv val_ columns, '
              'best_model.h5); %d train; the test set (%d) is used once, at the end'
              % (s.validation_split, len(train[0]), len(test.x)))
    else:
        validation = test
        print('note: validating on the test set (log.csv val_ columns and best_model.h5 are '
              'test-set figures); --validation_split N holds out training images instead')
    network = dataset_network(s.model, s.dataset)
    if network:
        print('note: --dataset %s builds its own --model %s network: %s (architecture flags '
              'given override these)' % (s.dataset, s.model, ', '.join(
                  '%s=%s' % (k, getattr(v, '__name__', v)) for k, v in sorted(network.items()))))
    return RunData(train, test, validation, extra)


def _memory_flags(s):
    """The flags memory grows with, for the out-of-memory hint."""
    return ['--batch_size %d' % s.batch_size] + model_sizes(s.model, s.arch)


def _models(s, test):
    """(train_model, eval_model, manipulate_model or None), built for the shape of the test
    Split's images (training digits or crops may be other sizes), described, with -w's
    weights loaded."""
    sizes = model_sizes(s.model, s.arch)
    with runsetup.out_of_memory_hint('building --model %s' % s.model, sizes):
        built = build_models(s.model, test.x.shape[1:], test.y.shape[1], s.dataset, **s.arch)
    describe(s.model, built[0], s.summary)
    if s.weights is not None:
        if load_weights_h5(built[0], s.weights) == 'full-model':
            print('note: %s is a full-model file: loaded its weights only (its model config '
                  'is ignored, nothing in it is executed)' % s.weights)
        print('Loaded weights from %s' % s.weights)
    return built


def _fit(s, spec, folder, train_model, parallel, data):
    """Compiles and trains train_model (parallel(train_model) under --multi_gpu) on the
    data set's training batches, from the checkpoint --resume finds; returns the fitted
    model."""
    record = datasets.DATASETS[s.dataset]
    initial_epoch = training.resume_weights(train_model, folder, s.epochs) if s.resume else 0
    fitted = parallel(train_model)
    compile_model(fitted, s.lr, s.lam_recon, spec, record.digits, s.xla)
    # the batches depend on (seed, epoch, index); train() restores the epoch
    x_train, y_train = data.train
    train_batches = record.batches(x_train, y_train, s.batch_size, s.seed, s.workers,
                                   shift_fraction=s.shift_fraction, augment=s.augment)
    if spec.kind == 'classifier':
        train_batches = batches.ClassifierBatches(train_batches)
    extra_callbacks = training.early_stopping_callbacks(spec.monitor, s.early_stopping,
                                                        s.stop_at_val_acc)
    if s.debug:
        extra_callbacks.append(C.tensorboard(folder.file(folder.TENSORBOARD), s.batch_size))
    if not s.resume:
        folder.remove_earlier_run()  # none is there without --overwrite
    training.record_validation_split(folder, s.validation_split, len(x_train))
    # model.json: what the weights are, so predict.py / export_model.py rebuild the model
    modelcard.record(folder.model, s.model, s.dataset, data.test.x.shape[1:],
                     data.test.y.shape[1], s.arch, s.data_dir)
    training.train(fitted, train_batches, datasets.validation_data(spec.kind, data.validation),
                   folder, s.epochs,
                   lambda epoch: training.scheduled_lr(epoch, s.lr, s.lr_decay, s.lr_min),
                   spec.monitor, initial_epoch, train_model, s.keep_checkpoints, extra_callbacks)
    return fitted


def _report(s, spec, eval_model, data, folder, members):
    """Tests eval_model (members: an ensemble, evaluation.test) on the test set, prints the
    data set's paper figure and, for affNIST, tests on its extra set too."""
    test = data.test
    acc = evaluation.test(eval_model, spec.kind, test.x, test.y, s.batch_size, folder.path,
                          members)
    paper_line = datasets.DATASETS[s.dataset].paper_line
    if paper_line:
        print(paper_line)
    if data.extra is not None:
        evaluation.affnist_report(eval_model, s.model, spec.kind, acc, len(test.x), data.extra,
                                  s.batch_size, folder.path, members)


def ensemble_members(weights, testing):
    """-w given once (a path or a one-item list) or several times: (the file loaded first,
    the ensemble's files or None). UserError for several outside -t or a file named twice."""
    if weights is None or isinstance(weights, str):
        return weights, None
    weights = list(weights)
    if len(weights) == 1:
        return weights[0], None
    if not testing:
        raise UserError('-w given %d times: an ensemble (the mean of the models\' capsule '
                        'lengths) is for testing (-t); training starts from one -w'
                        % len(weights))
    twice = sorted(set(w for w in weights if weights.count(w) > 1))
    if twice:
        raise UserError('-w %s is given twice: each ensemble member once' % twice[0])
    return weights[0], weights


def describe(model, train_model, summary=False):
    """Prints what runs, in one line: the model, its parameter count (and without the
    decoder), Keras, the backend, its devices, the precision. summary: Keras'
    layer-by-layer table of train_model before it (--summary)."""
    if summary:
        train_model.summary()
    count = format(train_model.count_params(), ',') + ' parameters'
    if MODELS[model].kind != 'classifier':
        count += ' (%s trainable without the decoder)' % format(trainable_count(train_model), ',')
    print('%s: %s; %s' % (model, count, C.stack_line()))


def model_sizes(model, options):
    """The size flags of --model that memory grows with, as '--flag value' for those given
    (e.g. ['--conv1_filters 1000000000']), else the flag names ([] for a fixed model)."""
    flags = [k for k in ARCH_FLAGS if k in MODELS[model].flags]
    given = ['--%s %s' % (k, options[k]) for k in flags if options.get(k) is not None]
    return given or ['--%s' % k for k in flags if k in ('conv1_filters', 'primary_channels')]


# ---------------------------------------------------------------- CLI
class RecipeParser(OneLineParser):
    """OneLineParser that refuses the model and dataset flags that do not apply to the chosen
    --model / --dataset, then fills the flags left unset (None) from MODELS[--model].recipe."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extra = super(RecipeParser, self).parse_known_args(args, namespace)
        model = getattr(namespace, 'model', 'capsnet')
        dataset = getattr(namespace, 'dataset', 'mnist')
        allowed = MODELS[model].flags + datasets.dataset_flags(dataset)
        for flag in MODEL_FLAGS + datasets.ALL_DATASET_FLAGS + datasets.AUGMENT_FLAGS:
            if getattr(namespace, flag, None) is not None and flag not in allowed:
                self.error('--%s does not apply to --model %s --dataset %s'
                           % (flag, model, dataset))
        table = getattr(namespace, 'reproduce', None)
        given = [f for f in reproduce.SETS if getattr(namespace, f, None) is not None]
        if table and given:  # silently trained with the table's values otherwise
            self.error('--reproduce %s sets %s for each of its configurations: drop --%s'
                       % (table, ' and '.join('--' + f for f in reproduce.SETS), given[0]))
        for key, value in MODELS[model].recipe.items():
            if getattr(namespace, key, None) is None:
                setattr(namespace, key, value)
        return namespace, extra


def _recipe_help(text, key):
    """text + '(default: capsnet 50, efficient 150)' from the models' recipes."""
    values = ['%s %s' % (name, spec.recipe[key]) for name, spec in sorted(MODELS.items())
              if spec.recipe.get(key) is not None]
    return '%s (default: %s)' % (text, ', '.join(values))


def _bounded(kind, low=None, high=None, low_open=False):
    """argparse type: kind(text) within [low, high] (low excluded if low_open). NaN and
    infinities are refused: no flag of this CLI means anything by them, and NaN passes every
    comparison (--lr nan trained at lr 0, --stop_at_val_acc nan never stopped)."""
    def check(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError('%r is not a valid %s' % (text, kind.__name__))
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError('%s is not a finite number' % text)
        if low is not None and (value < low or (low_open and value == low)):
            raise argparse.ArgumentTypeError('%s must be %s %s'
                                             % (text, '>' if low_open else '>=', low))
        if high is not None and value > high:
            raise argparse.ArgumentTypeError('%s must be <= %s' % (text, high))
        return value
    return check


# routing iterations beyond this only cost time (the paper's capsules settle within 3);
# --routings 100000 ran for minutes without a line of output
MAX_ROUTINGS = 20


def build_parser():
    p = RecipeParser(description='Capsule Network on MNIST (train, test, manipulate).')
    p.add_argument('--model', default='capsnet', choices=sorted(MODELS),
                   help='which network: capsnet (the paper), efficient (Efficient-CapsNet), '
                        'cnn (baseline)')
    p.add_argument('--dataset', default='mnist', choices=sorted(datasets.DATASETS),
                   help=datasets.dataset_help())
    p.add_argument('--epochs', default=None, type=_bounded(int, 1),
                   help=_recipe_help('training epochs', 'epochs'))
    p.add_argument('--batch_size', default=None, type=_bounded(int, 1),
                   help=_recipe_help('images per step', 'batch_size'))
    p.add_argument('--lr', default=None, type=_bounded(float, 0, low_open=True),
                   help=_recipe_help('initial learning rate, Adam', 'lr'))
    p.add_argument('--lr_decay', default=None, type=_bounded(float, 0, 1, low_open=True),
                   help=_recipe_help('learning rate multiplier per epoch: '
                                     'lr_e = max(lr_min, lr * lr_decay^e)', 'lr_decay'))
    p.add_argument('--lr_min', default=None, type=_bounded(float, 0),
                   help=_recipe_help('learning rate floor', 'lr_min'))
    p.add_argument('--augment', default=None, choices=['shift', 'efficient'],
                   help=_recipe_help('training augmentation: shift (up to --shift_fraction) or '
                                     'efficient (rotation, shift, squeeze, erase)', 'augment'))
    p.add_argument('--lam_recon', default=None, type=_bounded(float, 0),
                   help=_recipe_help('weight of the reconstruction MSE (0.392 = 0.0005 * 784)',
                                     'lam_recon'))
    p.add_argument('-r', '--routings', default=None, type=_bounded(int, 1, MAX_ROUTINGS),
                   help='routing iterations, 1..%d (default 3; the paper: 1 or 3), --model '
                        'capsnet' % MAX_ROUTINGS)
    p.add_argument('--shift_fraction', default=None, type=_bounded(float, 0, 0.5),
                   help='max random shift as a fraction of the image size (default 0.1 -> 2 px)')
    p.add_argument('--debug', action='store_true', help='write TensorBoard logs')
    p.add_argument('--summary', action='store_true',
                   help="print Keras' layer-by-layer model summary at start-up")
    p.add_argument('--save_dir', default='./result', help='where weights, logs and figures go')
    p.add_argument('-t', '--testing', action='store_true',
                   help='test the model given by -w instead of training')
    p.add_argument('--digit', default=5, type=_bounded(int, 0, 9),
                   help='digit whose capsule is manipulated (with -t)')
    p.add_argument('-w', '--weights', default=None, action='append',
                   help='weights .h5 to load (test or fine-tune); with -t, several -w test their '
                        'ensemble: the mean of the models\' capsule lengths (class scores)')
    p.add_argument('--data_dir', default=None,
                   help='folder with the MNIST idx files (default data/mnist, else download); '
                        '--dataset folder: the folder of your images; --dataset npz: the .npz')
    p.add_argument('--train_samples', default=None, type=_bounded(int, 1),
                   help='train on the first N training images only (quick runs)')
    p.add_argument('--test_samples', default=None, type=_bounded(int, 1),
                   help='test (and, without --validation_split, validate) on the first N '
                        'test images only')
    p.add_argument('--validation_split', default=0, type=_bounded(int, 0), metavar='N',
                   help='hold out the last N training images (after --train_samples) as the '
                        'validation set: log.csv val_ columns, best_model.h5, --early_stopping '
                        'and --stop_at_val_acc follow it, and the test set is evaluated once, '
                        'at the end, into test_results.json. 0 (default, the seed repo\'s '
                        'way): the test set validates, so the val_ columns are test figures')
    p.add_argument('--seed', default=None, type=_bounded(int, 0, 2 ** 32 - 1),
                   help='random seed, 0 .. 2^32-1 (shuffling, shifts, init)')
    p.add_argument('--multi_gpu', default=0, type=_bounded(int, 0),
                   help='data-parallel training on N GPUs (0/1: off; TF_CONFIG set: all workers); '
                        '--batch_size is split between them and must be divisible by N')
    p.add_argument('--mixed_precision', default='off', choices=sorted(C.PRECISIONS),
                   help='convolutions and dense layers compute in bf16 or fp16 (loss scaling) '
                        'with float32 variables; capsule math stays float32 (Keras 3 only)')
    p.add_argument('--xla', default='auto', choices=runsetup.XLA_MODES,
                   help="on: TensorFlow's training steps compiled with XLA (CPU: capsnet in "
                        "float32 1.2-1.3x faster; efficient, cnn and bf16 slower; not with "
                        "--seed); auto: Keras' choice (XLA on GPUs)")
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
    p.add_argument('--overwrite', action='store_true',
                   help='train afresh in a --save_dir that holds an earlier run (log.csv, '
                        'weights-XX.h5, trained_model.h5): its files are removed when training '
                        'starts. Without it (or --resume) such a --save_dir is refused')
    p.add_argument('--reproduce', default=None, choices=['table1'],
                   help="train the paper's Table 1 configurations (routings 1/2/3, with and "
                        "without reconstruction) in turn under <save_dir>/table1/ (resumable) "
                        "and print paper vs ours")
    p.add_argument('--affnist_dir', default=None,
                   help='real affNIST files for --dataset affnist: a folder (test_batches/, '
                        'test_batches.zip, test.mat ...), one .mat or a downloaded .zip; without '
                        'it (and with no files in data/affnist/) a generated affNIST-style set '
                        'is used')
    p.add_argument('--affnist_cache', default=None,
                   help='folder caching the generated affNIST-style set (default data/affnist/)')
    p.add_argument('--multimnist_pairs', default=None, type=_bounded(int, 1), metavar='K',
                   help='--dataset multimnist: overlays per test digit in the fixed test set '
                        '(default %d: 10,000 test images; the paper used 1,000)'
                        % datasets.MULTIMNIST_PAIRS)
    p.add_argument('--smallnorb_dir', default=None,
                   help='--dataset smallnorb: folder with the six smallnorb-*-{dat,cat,info}.mat '
                        'files (raw or .gz; default data/smallnorb/)')
    p.add_argument('--cifar10_dir', default=None,
                   help='--dataset cifar10: the binary version, cifar-10-binary.tar.gz or its '
                        'cifar-10-batches-bin/ (default data/cifar10/)')
    p.add_argument('--svhn_dir', default=None,
                   help='--dataset svhn: folder with train_32x32.mat and test_32x32.mat '
                        '(default data/svhn/)')
    p.add_argument('--early_stopping', default=None, type=_bounded(int, 0), metavar='PATIENCE',
                   help='stop when validation accuracy has not improved for PATIENCE epochs')
    p.add_argument('--stop_at_val_acc', default=None, type=_bounded(float, 0, 1, low_open=True),
                   help='stop once validation accuracy reaches this (the paper stopped its '
                        'affNIST models at ~0.992 on expanded MNIST)')
    arch = p.add_argument_group('architecture of --model capsnet (defaults: the paper); '
                                '--model cnn takes --conv1_filters F (channels F, F, F/2), '
                                '--pools, --fc1_units')
    arch.add_argument('--conv1_filters', default=None, type=_bounded(int, 1), help='default 256')
    arch.add_argument('--conv1_kernel', default=None, type=_bounded(int, 1), help='default 9')
    arch.add_argument('--primary_channels', default=None, type=_bounded(int, 1),
                      help='primary capsule channels (default 32 -> 1152 capsules on 28x28)')
    arch.add_argument('--primary_dim', default=None, type=_bounded(int, 1), help='default 8')
    arch.add_argument('--primary_kernel', default=None, type=_bounded(int, 1), help='default 9')
    arch.add_argument('--primary_strides', default=None, type=_bounded(int, 1), help='default 2')
    arch.add_argument('--digit_dim', default=None, type=_bounded(int, 1), help='default 16')
    arch.add_argument('--pools', default=None, type=_bounded(int, 0, 3),
                      help='--model cnn: 2x2 max-pools after the first POOLS conv layers '
                           '(default 2; --dataset mnist: 0, Table 1\'s baseline)')
    arch.add_argument('--fc1_units', default=None, type=_bounded(int, 1),
                      help='--model cnn: units of its first FC layer (default 656; '
                           '--dataset mnist: 328, Table 1\'s baseline)')
    return p


def main(argv=None):
    """The command line: flags -> keyword arguments of `run` / `reproduce_table1`; a
    UserError or OSError is one `error:` line and exit code 2, Ctrl-C 130 (safeio.run_cli)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if '--reproduce' in argv and {'-h', '--help'} & set(argv):  # its own help, not the generic
        print(reproduce.help_text())
        return 0
    args = build_parser().parse_args(argv)
    options = {k: v for k, v in vars(args).items() if v is not None or k not in
               MODEL_FLAGS + datasets.ALL_DATASET_FLAGS + datasets.AUGMENT_FLAGS}
    table = options.pop('reproduce')

    def body():
        C.configure_threads()
        reproduce.reproduce_table1(run, **options) if table == 'table1' else run(**options)
    return run_cli(body)


if __name__ == '__main__':
    sys.exit(main())
