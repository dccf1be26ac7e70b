"""Capsule layers for Keras (2.2.4 and 3): squash, Length, Mask, PrimaryCap, CapsuleLayer.

Dynamic routing follows Procedure 1 of Sabour, Frosst & Hinton, "Dynamic Routing Between
Capsules" (NIPS 2017). Every tensor op goes through `compat`, so the same code runs on
keras 2.2.4 / TF 1.x and on Keras 3 with the TensorFlow, JAX or PyTorch backend. Every layer
is registered serializable (C.serializable) with its arguments in get_config: after `import
capsulelayers` a plain keras.models.load_model reads a full model of this repo (export_model.py).
"""
import numpy as np

import compat as C
from compat import layers
from convolution import Conv2D

# Inside the square roots: keeps value and gradient finite at the zero vector while staying
# far below the squared lengths of capsules at initialisation (~1e-15): the usual 1e-7
# swamps them, the gradients vanish and training sits at chance for hundreds of steps.
EPSILON = 1e-20


def squash(vectors, axis=-1):
    """Non-linear squashing: v = |s|^2 / (1 + |s|^2) * s / |s|.

    vectors: [..., dim] -> same shape, each vector's length in [0, 1). Finite value and
    gradient at s = 0 because |s| is computed as sqrt(|s|^2 + EPSILON).
    """
    squared_norm = C.reduce_sum(C.square(vectors), axis=axis, keepdims=True)
    scale = squared_norm / (1 + squared_norm) / C.sqrt(squared_norm + EPSILON)
    return scale * vectors


@C.serializable
class CapsuleMath(layers.Layer):
    """Base of the layers doing capsule math (squash, routing, lengths, masks): they compute
    in float32 under a mixed-precision policy, because capsule lengths at initialisation
    (~1e-4) and the 1e-20 epsilon under the square roots do not survive bf16/fp16."""

    def __init__(self, **kwargs):
        kwargs.setdefault('dtype', 'float32')
        super(CapsuleMath, self).__init__(**kwargs)


@C.serializable
class Squash(CapsuleMath):
    """Layer form of `squash` over the last axis: [batch, num_capsule, dim] -> same."""

    def call(self, inputs, **kwargs):
        return squash(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape


@C.serializable
class Length(CapsuleMath):
    """Capsule lengths as class scores: [batch, num_capsule, dim] -> [batch, num_capsule]."""

    def call(self, inputs, **kwargs):
        return C.sqrt(C.reduce_sum(C.square(inputs), -1) + EPSILON)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])


@C.serializable
class Mask(CapsuleMath):
    """Zeroes all capsules but one and flattens, for the decoder.

    inputs: capsules [batch, num_capsule, dim], or [capsules, y] with y one-hot
    [batch, num_capsule] (training: mask by the true label). Without y the rank-th longest
    capsule is kept (prediction; rank 0: the longest, rank 1: the second longest, MultiMNIST's
    second digit). Output: [batch, num_capsule * dim].
    """

    def __init__(self, rank=0, **kwargs):
        super(Mask, self).__init__(**kwargs)
        self.rank = int(rank)

    def call(self, inputs, **kwargs):
        if isinstance(inputs, (list, tuple)):
            capsules, mask = inputs
        else:
            capsules = inputs
            mask = self.rank_mask(C.sqrt(C.reduce_sum(C.square(capsules), -1)))
        shape = C.int_shape(capsules)
        masked = capsules * C.expand_dims(C.cast(mask, capsules.dtype), -1)
        return C.reshape(masked, (-1, shape[1] * shape[2]))

    def rank_mask(self, lengths):
        """One-hot [batch, num_capsule] of the rank-th longest of lengths [batch, num_capsule]."""
        n = C.int_shape(lengths)[1]
        for _ in range(self.rank):  # lengths are in [0, 1]: -2 takes the longest out of the race
            lengths = lengths - 2. * C.one_hot(C.argmax(lengths, 1), n)
        return C.one_hot(C.argmax(lengths, 1), n)

    def get_config(self):
        config = super(Mask, self).get_config()
        config['rank'] = self.rank
        return config

    def compute_output_shape(self, input_shape):
        shape = input_shape[0] if isinstance(input_shape, list) else input_shape
        return (shape[0], shape[1] * shape[2])


@C.serializable
class CapsuleToCapsule(CapsuleMath):
    """Base of the fully connected capsule layers (CapsuleLayer, FCCaps).

    inputs: [batch, input_num_capsule, input_dim_capsule]
    output: [batch, num_capsule, dim_capsule]
    Subclasses create their weights in add_capsule_weights(), once the input sizes are known.
    """

    def __init__(self, num_capsule, dim_capsule, **kwargs):
        super(CapsuleToCapsule, self).__init__(**kwargs)
        self.num_capsule = int(num_capsule)
        self.dim_capsule = int(dim_capsule)

    def build(self, input_shape):
        self.input_num_capsule = int(input_shape[1])
        self.input_dim_capsule = int(input_shape[2])
        self.add_capsule_weights()
        super(CapsuleToCapsule, self).build(input_shape)

    def add_capsule_weights(self):
        raise NotImplementedError

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_capsule, self.dim_capsule)

    def get_config(self):
        config = {'num_capsule': self.num_capsule, 'dim_capsule': self.dim_capsule}
        base = super(CapsuleToCapsule, self).get_config()
        return dict(list(base.items()) + list(config.items()))


@C.serializable
class CapsuleLayer(CapsuleToCapsule):
    """Fully connected capsule layer with dynamic routing (Procedure 1).

    inputs: [batch, input_num_capsule, input_dim_capsule]
    output: [batch, num_capsule, dim_capsule]
    W: [num_capsule, input_num_capsule, dim_capsule, input_dim_capsule], one matrix per
    (output, input) capsule pair, Glorot uniform over the whole tensor as in the reference
    implementation (small: initial lengths ~1e-4, hence the tiny EPSILON).
    leaky: the paper's "none-of-the-above" routing class (§7, CIFAR-10), as the official code
    does it (leaky=true, `_leaky_routing`): each input capsule's coupling softmax gets one
    more parent whose logit stays 0, so a capsule that fits no class can send its vote
    there; that parent has no weights and no output. No extra weights: a leaky layer loads
    the same weights as a plain one.
    """

    def __init__(self, num_capsule, dim_capsule, routings=3, leaky=False, **kwargs):
        super(CapsuleLayer, self).__init__(num_capsule, dim_capsule, **kwargs)
        if int(routings) < 1:
            raise ValueError('routings must be >= 1, got %r' % (routings,))
        self.routings = int(routings)
        self.leaky = bool(leaky)

    def add_capsule_weights(self):
        self.W = self.add_weight(
            name='W',
            shape=(self.num_capsule, self.input_num_capsule, self.dim_capsule,
                   self.input_dim_capsule),
            initializer='glorot_uniform')

    def predictions(self, inputs):
        """Prediction vectors u_hat[j|i] = W[j, i] u[i]: [batch, num_capsule, in_num, dim].

        One batched matmul over the input-capsule axis, no tiling of the inputs.
        """
        n_in, d_in = self.input_num_capsule, self.input_dim_capsule
        n_out, d_out = self.num_capsule, self.dim_capsule
        u = C.transpose(inputs, (1, 0, 2))                       # [in_num, batch, d_in]
        w = C.reshape(C.transpose(self.W, (1, 3, 0, 2)), (n_in, d_in, n_out * d_out))
        u_hat = C.batch_dot(u, w, (2, 1))                        # [in_num, batch, out*d_out]
        u_hat = C.reshape(u_hat, (n_in, -1, n_out, d_out))
        return C.transpose(u_hat, (1, 2, 0, 3))

    def route(self, u_hat):
        """Procedure 1 on u_hat [batch, num_capsule, in_num, dim] -> v [batch, num_capsule, dim].

        b starts at 0; c = softmax(b) over the output-capsule axis; s = sum_i c u_hat;
        v = squash(s); b += u_hat . v between iterations. leaky: the softmax is taken over
        [0, b] (one more logit, fixed at 0) and that extra coupling is dropped.
        """
        n_in, n_out, d_out = self.input_num_capsule, self.num_capsule, self.dim_capsule
        u_hat_rows = C.reshape(u_hat, (-1, n_in, d_out))          # [batch*out, in_num, dim]
        b = None                                                  # [batch, out, in_num]
        for i in range(self.routings):
            if b is None:
                # b = 0: c = softmax(0) = 1 / num_capsule for every pair. Written out, not as
                # the softmax of a zero tensor, which XLA constant-folds for seconds per
                # compiled function on JAX ([100, 1152] logits: 2.9 s); one product fewer
                s = C.reduce_sum(u_hat, axis=2) / float(n_out + self.leaky)
            else:
                c = self.couplings(b)
                s = C.batch_dot(C.reshape(c, (-1, 1, n_in)), u_hat_rows, (2, 1))
                s = C.reshape(s, (-1, n_out, d_out))
            v = squash(s)
            if i < self.routings - 1:
                agreement = C.batch_dot(u_hat_rows, C.reshape(v, (-1, d_out, 1)), (2, 1))
                agreement = C.reshape(agreement, (-1, n_out, n_in))
                b = agreement if b is None else b + agreement
        return v

    def couplings(self, b):
        """c = softmax over the output axis of the logits b [batch, out, in_num] (leaky: of
        [0, b], the 0 logit's coupling dropped) -> [batch, out, in_num]."""
        if not self.leaky:
            return C.softmax(b, axis=1)
        # exp(b_j) / (exp(0) + sum_k exp(b_k)), shifted by m = max(0, max_k b_k) for range
        m = C.relu(C.reduce_max(b, axis=1, keepdims=True))
        e = C.exp(b - m)
        return e / (C.exp(-m) + C.reduce_sum(e, axis=1, keepdims=True))

    def call(self, inputs, training=None):
        return self.route(self.predictions(inputs))

    def get_config(self):
        config = super(CapsuleLayer, self).get_config()
        config['routings'] = self.routings
        config['leaky'] = self.leaky
        return config


def PrimaryCap(inputs, dim_capsule, n_channels, kernel_size, strides, padding):
    """Primary capsules: one Conv2D of dim_capsule*n_channels filters, reshaped and squashed.

    inputs: [batch, H, W, C] -> [batch, H' * W' * n_channels, dim_capsule]
    """
    # convolution.Conv2D: the plain layer, but for the strided convolution's CPU paths
    output = Conv2D(filters=dim_capsule * n_channels, kernel_size=kernel_size,
                    strides=strides, padding=padding, name='primarycap_conv2d')(inputs)
    outputs = layers.Reshape(target_shape=(-1, dim_capsule), name='primarycap_reshape')(output)
    return Squash(name='primarycap_squash')(outputs)


# ---------------------------------------------------------------- Efficient-CapsNet
# Mazzia, Salvetti & Chiaberge, "Efficient-CapsNet: capsule network with self-attention
# routing" (Sci. Rep. 2021): a different squash, depthwise primary capsules and one
# non-iterative self-attention routing step with learned log-priors.

def efficient_squash(vectors, axis=-1, eps=EPSILON):
    """Efficient-CapsNet squash: v = (1 - 1/e^|s|) * s / |s|.

    vectors: [..., dim] -> same shape, each vector's length in [0, 1). |s| is computed as
    sqrt(|s|^2 + eps) and eps is added to both denominators, so value and gradient stay
    finite at s = 0 (where v = 0).
    """
    norm = C.sqrt(C.reduce_sum(C.square(vectors), axis=axis, keepdims=True) + eps)
    return (1 - 1 / (C.exp(norm) + eps)) * vectors / (norm + eps)


@C.serializable
class EfficientSquash(CapsuleMath):
    """Layer form of `efficient_squash` over the last axis: [batch, n, dim] -> same."""

    def call(self, inputs, **kwargs):
        return efficient_squash(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape


def EfficientPrimaryCap(inputs, dim_capsule, kernel_size=9, strides=1, name='primarycap'):
    """Depthwise primary capsules: DepthwiseConv2D(kernel_size, strides) with bias, reshaped,
    squashed.

    inputs: [batch, H, W, C] -> [batch, H' * W' * C / dim_capsule, dim_capsule]. On the
    MNIST stack H = W = kernel_size = 9 and C = 128: one 1x1x128 map -> 16 capsules of 8-D
    (the reference's Conv2D(128, 9, groups=128): 128 * (81 + 1) = 10,496 parameters); smallNORB:
    8x8 maps, kernel 8; MultiMNIST: 6x6 maps, kernel 5, stride 2.
    """
    output = layers.DepthwiseConv2D(kernel_size=kernel_size, strides=strides, padding='valid',
                                    use_bias=True, name=name + '_dwconv')(inputs)
    outputs = layers.Reshape(target_shape=(-1, dim_capsule), name=name + '_reshape')(output)
    return EfficientSquash(name=name + '_squash')(outputs)


@C.serializable
class FCCaps(CapsuleToCapsule):
    """Fully connected capsules with self-attention routing (Efficient-CapsNet).

    inputs u: [batch, input_num_capsule (i), input_dim_capsule]
    output v: [batch, num_capsule (j), dim_capsule (d)]
    Weights: W [num_capsule, input_num_capsule, input_dim_capsule, dim_capsule] (He normal),
    log-prior b [num_capsule, input_num_capsule, 1] (zeros).

    u_hat[j, i] = u[i] W[j, i]; A_j = U_j U_j^T / sqrt(d) with U_j the rows u_hat[j, :];
    c[j, i] = softmax over j of sum_k A_j[i, k]; s_j = sum_i u_hat[j, i] (c[j, i] + b[j, i]);
    v_j = efficient_squash(s_j). One step, no iterations.
    """

    def add_capsule_weights(self):
        self.W = self.add_weight(
            name='W', shape=(self.num_capsule, self.input_num_capsule,
                             self.input_dim_capsule, self.dim_capsule),
            initializer='he_normal')
        self.b = self.add_weight(name='b', shape=(self.num_capsule, self.input_num_capsule, 1),
                                 initializer='zeros')

    def call(self, inputs, training=None):
        u_hat = C.einsum('bil,jild->bjid', inputs, self.W)          # [batch, j, i, d]
        # sum_k A_j[i, k] = u_hat[j, i] . sum_k u_hat[j, k]: no [i, i] matrix needed
        total = C.reduce_sum(u_hat, axis=2, keepdims=True)          # [batch, j, 1, d]
        logits = C.reduce_sum(u_hat * total, axis=-1, keepdims=True)  # [batch, j, i, 1]
        c = C.softmax(logits / float(np.sqrt(self.dim_capsule)), axis=1)
        s = C.reduce_sum(u_hat * (c + self.b), axis=2)              # [batch, j, d]
        return efficient_squash(s)
