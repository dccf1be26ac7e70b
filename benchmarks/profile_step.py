"""Where one training step's time goes (`bench.py --profile`): TensorFlow on Keras 3 only.

Each part of a compiled model's training step is timed alone, as its own tf.function on
random tensors of the shapes and dtypes it has in the step (the bench's batch), median of
--steps calls after max(--warmup, 1) (tracing):
- each Conv2D: the convolution's forward, its input gradient (none for a layer reading the
  image: the step does not compute it) and its kernel gradient, each alone in the compute
  dtype through the layer's own convolution_op (so convolution.Conv2D's per-tap input gradient
  where the step uses it), then its bias + activation (forward + backward);
- the capsule layer (CapsuleLayer): its transform u_hat = W u and its routing, each forward +
  backward; every other layer (a nested model, the decoder, as one) forward + backward with
  its own casts;
- the loss (the compiled loss, forward + backward), the optimizer update (apply_gradients on
  every trainable variable), and the casts left out of the Conv2D rows: their variables to
  the compute dtype and the gradients back, their inputs (none in float32).
The parts' sum is set against the whole step (train_on_batch, timed by the bench): the
difference is what no part holds (metrics, Keras' step overhead, the fusion or overlap the
whole step gets and parts timed alone do not). Each part doing matrix products also shows
its GFLOP/s (bench.layer_flops) and its fraction of the machine's matmul rate.
JAX and PyTorch: not profiled (the bench says so); their steps are one compiled program or
eager ops, and this file times TensorFlow functions.
"""
import numpy as np

import bench


def profile(model, inputs, targets, steps, warmup, step_s, matmul_gflops):
    """The parts of one training step of the compiled `model` on a batch of inputs/targets
    (as train_on_batch takes them): [{'part', 'ms', 'share' (of step_s), 'gflops',
    'fraction_of_matmul' (None where the part does no counted products)}], then 'sum of the
    parts', 'whole step (train_on_batch)' and their difference."""
    import tensorflow as tf
    import compat as C
    from capsulelayers import CapsuleLayer
    tf.get_logger().setLevel('ERROR')  # one tf.function per part: its retracing warnings
    batch = len(inputs[0] if isinstance(inputs, list) else inputs)
    flops = bench.layer_flops(model)
    timer = Timer(steps, max(warmup, 1), batch, tf)
    # timed: (label, seconds, FLOPs per image or None); casts: (shape, from dtype, to dtype)
    timed, casts = [], []
    for layer in model.layers:
        if type(layer).__name__ == 'InputLayer':
            continue
        specs = input_specs(layer, model)
        mine = [r for r in flops if r[0] == layer.name or r[0].startswith(layer.name + '/')]
        if isinstance(layer, C.layers.Conv2D):  # convolution.Conv2D too
            timed += conv_parts(layer, specs[0], timer, mine[0][2] if mine else None)
            casts += conv_casts(layer, specs[0])
        elif isinstance(layer, CapsuleLayer):
            timed += capsule_parts(layer, specs[0], timer, mine)
        else:
            seconds = timer.forward_backward(lambda *xs: layer(list(xs) if len(xs) > 1 else xs[0],
                                                               training=True),
                                             [timer.random(s, d) for s, d, _ in specs],
                                             [not image for _, _, image in specs],
                                             layer.trainable_variables)
            timed.append(('%s (fwd + bwd)' % layer.name, seconds,
                          sum(f + b for _, _, f, b in mine) or None))
    timed.append(('loss (fwd + bwd)', loss_seconds(model, targets, timer), None))
    timed.append(('optimizer update', optimizer_seconds(model, timer), None))
    timed.append(('casts of the Conv2D layers (variables, gradients, inputs)',
                  timer.casts(casts), None))
    return rows(timed, batch, step_s, matmul_gflops)


class Timer(object):
    """Median seconds of tf.functions (steps calls after warmup) on random tensors of the batch."""

    def __init__(self, steps, warmup, batch, tf):
        self.steps, self.warmup, self.batch, self.tf = steps, warmup, batch, tf
        self.rng = np.random.RandomState(0)

    def random(self, shape, dtype):
        """[batch] + shape of dtype, uniform in [0, 1) (shape[0] None: the batch)."""
        shape = [self.batch if d is None else d for d in shape]
        return self.tf.cast(self.rng.rand(*shape).astype('float32'), dtype)

    def seconds(self, fn):
        return bench.median_seconds(self.tf.function(fn, autograph=False), self.steps,
                                    self.warmup)

    def forward_backward(self, fn, xs, watch, variables):
        """fn(*xs) and its gradients (output gradient: ones) for the xs flagged in watch and
        the variables."""
        tf = self.tf

        def step():
            with tf.GradientTape() as tape:
                for x, w in zip(xs, watch):
                    if w:
                        tape.watch(x)
                y = fn(*xs)
            wrt = [x for x, w in zip(xs, watch) if w] + list(variables)
            return tape.gradient(y, wrt, output_gradients=tf.ones_like(y)) if wrt else y
        return self.seconds(step)

    def gradient(self, fn, xs, index):
        """The gradient of fn(*xs) for xs[index] alone: the op the step runs for it (the
        forward is not run: TensorFlow prunes what the returned gradient does not need)."""
        tf = self.tf

        def step():
            with tf.GradientTape() as tape:
                tape.watch(xs[index])
                y = fn(*xs)
            return tape.gradient(y, xs[index], output_gradients=tf.ones_like(y))
        return self.seconds(step)

    def casts(self, casts):
        """All the casts [(shape, from dtype, to dtype)] in one function (0 if none)."""
        if not casts:
            return 0.
        xs = [self.random(shape, source) for shape, source, _ in casts]
        return self.seconds(lambda: [self.tf.cast(x, to) for x, (_, _, to) in zip(xs, casts)])


def input_specs(layer, model):
    """[(shape, dtype, reads a model input)] of the tensors layer takes in the model (a nested
    model: its own inputs)."""
    import compat as C
    tensors = layer.inputs if hasattr(layer, 'layers') else layer.input
    tensors = tensors if isinstance(tensors, (list, tuple)) else [tensors]
    return [(C.int_shape(t), str(t.dtype), any(t is i for i in model.inputs)) for t in tensors]


def conv_parts(layer, spec, timer, forward_flops):
    """A Conv2D's forward, input gradient (unless it reads the image), kernel gradient and
    bias + activation: [(label, seconds, FLOPs per image)]."""
    import compat as C
    tf, dtype = timer.tf, layer.compute_dtype
    shape, _, image = spec
    x, kernel = timer.random(shape, dtype), tf.cast(tf.convert_to_tensor(layer.kernel), dtype)
    conv = layer.convolution_op
    parts = [('%s forward' % layer.name, timer.seconds(lambda: conv(x, kernel)), forward_flops)]
    if not image:
        parts.append(('%s input gradient' % layer.name, timer.gradient(conv, [x, kernel], 0),
                      forward_flops))
    parts.append(('%s kernel gradient' % layer.name, timer.gradient(conv, [x, kernel], 1),
                  forward_flops))
    z = timer.random(C.int_shape(layer.output), dtype)
    bias = tf.cast(tf.convert_to_tensor(layer.bias), dtype) if layer.bias is not None else 0.
    parts.append(('%s bias + activation (fwd + bwd)' % layer.name,
                  timer.forward_backward(lambda z: layer.activation(z + bias), [z], [True], []),
                  None))
    return parts


def conv_casts(layer, spec):
    """The casts a Conv2D's step does outside conv_parts: its variables to the compute dtype
    and their gradients back, its input to the compute dtype (and back, unless the image)."""
    import compat as C
    dtype, shape, source, image = layer.compute_dtype, spec[0], spec[1], spec[2]
    casts = []
    for v in layer.trainable_variables:
        if str(v.dtype) != dtype:
            casts += [(C.int_shape(v), str(v.dtype), dtype), (C.int_shape(v), dtype, str(v.dtype))]
    if source != dtype:
        casts += [(shape, source, dtype)] + ([] if image else [(shape, dtype, source)])
    return casts


def capsule_parts(layer, spec, timer, flops):
    """The capsule layer's transform u_hat = W u and its routing, each forward + backward."""
    by_part = dict((part, f + b) for _, part, f, b in flops)
    u = timer.random(spec[0], spec[1])
    u_hat = layer.predictions(u)  # [batch, out, in, dim]: routing's input
    return [('%s transform W u (fwd + bwd)' % layer.name,
             timer.forward_backward(layer.predictions, [u], [True], [layer.W]),
             by_part.get('transform')),
            ('%s routing (fwd + bwd)' % layer.name,
             timer.forward_backward(layer.route, [u_hat], [True], []), by_part.get('routing'))]


def loss_seconds(model, targets, timer):
    """The compiled loss on random predictions of the outputs' shapes: forward + backward."""
    preds = [timer.random(t.shape, str(t.dtype)) for t in model.outputs]
    y = [timer.tf.convert_to_tensor(t) for t in targets] if isinstance(targets, list) else targets

    def loss(*p):
        return model.compute_loss(y=y, y_pred=list(p) if len(p) > 1 else p[0])
    return timer.forward_backward(loss, preds, [True] * len(preds), [])


def optimizer_seconds(model, timer):
    """One apply_gradients of the model's optimizer on every trainable variable."""
    variables = model.trainable_variables
    grads = [timer.tf.constant(1e-3 * timer.rng.rand(*v.shape).astype('float32'))
             for v in variables]
    return timer.seconds(lambda: model.optimizer.apply_gradients(zip(grads, variables)))


def rows(timed, batch, step_s, matmul_gflops):
    """[(label, seconds, FLOPs per image or None)] -> profile's rows, with the sum, the whole
    step and their difference last."""
    out = []
    for label, seconds, flops in timed:
        gflops = flops * batch / seconds / 1e9 if flops and seconds else None
        out.append(row(label, seconds, step_s, gflops, matmul_gflops))
    total = sum(s for _, s, _ in timed)
    out += [row('sum of the parts', total, step_s), row('whole step (train_on_batch)', step_s,
                                                         step_s),
            row('whole step - sum of the parts', step_s - total, step_s)]
    return out


def row(label, seconds, step_s, gflops=None, matmul_gflops=None):
    return {'part': label, 'ms': round(1000 * seconds, 2), 'share': round(seconds / step_s, 3),
            'gflops': None if gflops is None else round(gflops, 3),
            'fraction_of_matmul': None if gflops is None else round(gflops / matmul_gflops, 4)}


def table(parts):
    """Markdown table of profile()'s rows."""
    lines = ['| part | ms | share of step | GFLOP/s | of matmul |', '|---|---|---|---|---|']
    for p in parts:
        lines.append('| %s | %s | %s | %s | %s |' % tuple(
            '' if p[k] is None else p[k]
            for k in ('part', 'ms', 'share', 'gflops', 'fraction_of_matmul')))
    return '\n'.join(lines)
