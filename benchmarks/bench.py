"""Training / inference speed and memory of the models, per Keras backend.

    python benchmarks/bench.py                                 # CapsNet, routings 1/2/3, this backend
    python benchmarks/bench.py --backends tensorflow,torch,jax --compare
    python benchmarks/bench.py --steps 2 --warmup 1 --routings 3 --batch_size 8   # smoke test
    python benchmarks/bench.py --arch conv1_filters=64,primary_channels=8   # a smaller CapsNet
    CAPSNET_THREADS=1 python benchmarks/bench.py --routings 3    # ops on one thread per process
    python benchmarks/bench.py --routings 3 --precision off,bf16 --profile   # where the time goes
    python benchmarks/bench.py --routings 3 --xla auto,on      # TensorFlow with and without XLA

Each configuration runs in its own process (clean peak RSS, one backend per process) and
prints one JSON line; the parent prints a markdown table. Figures are medians over --steps
timed steps after --warmup untimed ones, on random inputs of MNIST shape.
--compare also times the seed's routing (per-sample map_fn over inputs tiled once per output
capsule, then batch_dot) on the same weights, and checks that both give the same capsules;
and the whole training step of the model with that seed-style capsule layer against ours,
the two timed in turns in one process, with the ratio (what a user of either would see).

Every row also has the step's arithmetic rate against this machine's own limit, measured in
the same worker: `gflops` (the step's FLOPs, counted from the layer shapes by `layer_flops`,
forward + backward, over its median time) and `fraction_of_matmul` (that rate over the best
GFLOP/s of the backend's [N, N] x [N, N] matmul, N = --matmul_size, in the dtype the step
computes in: float32, bfloat16 or float16). --profile (TensorFlow on Keras 3) adds where one
training step's time goes: benchmarks/profile_step.py.
All flags are checked before any worker starts: a bad value is one `error:` line, exit 2.
"""
import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from safeio import UserError, atomic_write, run_cli  # noqa: E402 (no Keras: the parent stays light)

# the Keras 3 backends this repository runs on (keras 2.2.4: tensorflow)
BACKENDS = ('tensorflow', 'jax', 'torch')


# ---------------------------------------------------------------- worker (one config)
def naive_capsule_layer_class():
    """CapsuleLayer with û and routing written the way the seed repo does it."""
    import compat as C
    import tensors
    from capsulelayers import CapsuleLayer, squash

    class NaiveCapsuleLayer(CapsuleLayer):
        def predictions(self, inputs):
            # [batch, out, in_num, d_in]: the inputs copied once per output capsule
            tiled = tensors.tile(C.expand_dims(inputs, 1), (1, self.num_capsule, 1, 1))
            # per sample: keras-2.2.4 batch_dot(x [out,in,d_in], W [out,in,d_out,d_in], [2, 3])
            return tensors.map_fn(lambda x: C.einsum('jik,jiok->jio', x, self.W), tiled)

        def route(self, u_hat):
            b = C.zeros_like(u_hat[:, :, :, 0])
            for i in range(self.routings):
                c = C.softmax(b, axis=1)
                v = squash(C.einsum('bji,bjio->bjo', c, u_hat))
                if i < self.routings - 1:
                    b = b + C.einsum('bjo,bjio->bji', v, u_hat)
            return v

    return NaiveCapsuleLayer


def median_seconds(fn, steps, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


# ---------------------------------------------------------------- arithmetic: FLOPs, matmul rate
# --matmul_size default: the limit a bench row is set against. On this repo's shared 2-core AMD
# EPYC (busy, one thread) 1024/2048/4096 gave float32 16.6/18.2/22.2 and bf16 31.5/34.0/34.7
# GFLOP/s: the largest is the highest (the strictest limit), the rate docs/speed.md uses
MATMUL_SIZE = 4096
FLOP_RULE = ('FLOPs: the matrix products counted from the layer shapes (a multiply-add = 2), '
             'forward + backward, backward = 2x forward (input gradient + kernel gradient; '
             '1x for a layer reading the image); elementwise ops not counted (bench.layer_flops)')


def layer_flops(model, images=None):
    """The FLOPs per image of the model's matrix products, from its layer shapes:
    [(layer name, part, forward, backward)], nested models' layers as 'decoder/dense'.

    A multiply-add counts 2. Forward: Conv2D 2*H'*W'*k0*k1*C_in*C_out (H' x W' the output),
    DepthwiseConv2D 2*H'*W'*k0*k1*C*multiplier, Dense 2*n_in*n_out per row; CapsuleLayer
    'transform' (u_hat = W u) 2*n_in*n_out*d_out*d_in and 'routing': two products per
    iteration after the first (s = c u_hat and the agreement u_hat . v), 2*n_out*n_in*d_out
    each; FCCaps 'transform' 2*n_in*n_out*d_in*d_out and 'routing' its two attention
    products (logits, weighted sum) of 2*n_out*n_in*d_out each. Backward = 2x forward: one
    product of the forward's size per operand (a layer's input gradient and kernel gradient;
    both operands of routing's products); 1x for a layer reading the model's input, whose
    input gradient the step never computes. Not counted: bias adds, activations, squash,
    lengths, masks, normalisation, losses and the optimizer (elementwise, O(size), not
    O(size x fan-in): a few % of these models' products). images: the outermost model's
    inputs (a nested model's own input is not the image).
    """
    rows, images = [], model.inputs if images is None else images
    for layer in model.layers:
        if hasattr(layer, 'layers'):  # a nested model (the decoder): its own layers
            rows += [(layer.name + '/' + name, part, f, b)
                     for name, part, f, b in layer_flops(layer, images)]
            continue
        forward, parts = _forward_flops(layer)
        reads_input = bool(forward) and any(layer.input is t for t in images)
        rows += [(layer.name, part, f, f if reads_input else 2 * f)
                 for part, f in zip(parts, forward)]
    return [r for r in rows if r[2]]


def _forward_flops(layer):
    """([forward FLOPs per image], [part names]) of one layer (layer_flops' rules)."""
    import compat as C
    from capsulelayers import CapsuleLayer, FCCaps
    kind = type(layer).__name__
    if isinstance(layer, CapsuleLayer):
        n_in, d_in = layer.input_num_capsule, layer.input_dim_capsule
        n_out, d_out = layer.num_capsule, layer.dim_capsule
        return ([2 * n_in * n_out * d_out * d_in,
                 2 * (layer.routings - 1) * 2 * n_out * n_in * d_out], ['transform', 'routing'])
    if isinstance(layer, FCCaps):
        n_in, d_in = layer.input_num_capsule, layer.input_dim_capsule
        n_out, d_out = layer.num_capsule, layer.dim_capsule
        return [2 * n_in * n_out * d_in * d_out, 2 * 2 * n_out * n_in * d_out], ['transform',
                                                                                 'routing']
    if kind in ('Conv2D', 'DepthwiseConv2D', 'Dense'):
        kernel = C.int_shape(layer.kernel) if hasattr(layer, 'kernel') else \
            C.int_shape(layer.depthwise_kernel)
        positions = int(np.prod(C.int_shape(layer.output)[1:-1] or [1]))
        return [2 * positions * int(np.prod(kernel))], [kind.lower()]
    return [], []


def training_flops(model):
    """FLOPs of one training step per image: layer_flops' forward + backward, summed."""
    return sum(f + b for _, _, f, b in layer_flops(model))


def compute_dtype(precision):
    """The dtype a --mixed_precision setting computes in: 'off' float32, 'bf16' bfloat16..."""
    import compat as C
    return C.PRECISIONS[precision].replace('mixed_', '')


def matmul_gflops(precision, size, repeats=3):
    """GFLOP/s of the backend's matmul of two random [size, size] matrices in the dtype
    `precision` computes in: 2*size^3 over the best of `repeats` timings after one untimed,
    on the threads this process's ops use (this machine's limit for the step's products)."""
    import compat as C
    dtype = compute_dtype(precision)
    a, b = (np.random.RandomState(i).rand(size, size).astype('float32') for i in (0, 1))
    if C.KERAS3:
        ops = C.keras.ops
        a, b = ops.cast(a, dtype), ops.cast(b, dtype)

        def product():  # JAX dispatches asynchronously: wait for the result
            out = ops.matmul(a, b)
            getattr(out, 'block_until_ready', lambda: None)()
    else:  # keras 2.2.4 (float32 only): one graph; the sum keeps the fetch to a scalar
        K = C.keras.backend
        # variables, not constants: grappler would fold a product of constants once
        fetch = K.function([], [K.sum(K.dot(K.variable(a), K.variable(b)))])

        def product():
            fetch([])
    product()
    best = min(median_seconds(product, 1, 0) for _ in range(repeats))
    return 2. * size ** 3 / best / 1e9


def model_options(model, routings, arch):
    """The builder's keyword arguments: --routings where the model routes, and --arch."""
    import capsulenet
    options = {'routings': routings} if 'routings' in capsulenet.MODELS[model].flags else {}
    options.update(arch)
    return options


def parse_arch(text):
    """'conv1_filters=64,primary_channels=8' -> {'conv1_filters': 64, 'primary_channels': 8}."""
    arch = {}
    for item in filter(None, (text or '').split(',')):
        key, _, value = item.partition('=')
        try:
            arch[key.strip()] = int(value)
        except ValueError:
            raise UserError('--arch %r: expected NAME=INTEGER items' % item)
    return arch


def build_trained_pair(model, routings, arch=None):
    """Two compiled training models of `model` on the same weights: ours, and one whose
    CapsuleLayer is the seed-style layer above (everything else identical)."""
    import capsulenet
    spec = capsulenet.MODELS[model]
    options = model_options(model, routings, arch or {})
    pair = []
    for layer_class in (capsulenet.CapsuleLayer, naive_capsule_layer_class()):
        saved, capsulenet.CapsuleLayer = capsulenet.CapsuleLayer, layer_class
        try:  # the builder looks the class up in its module at call time
            train_model, eval_model, _ = capsulenet.build_models(model, (28, 28, 1), 10,
                                                                 **options)
        finally:
            capsulenet.CapsuleLayer = saved
        capsulenet.compile_model(train_model, 1e-3, 0.392, spec)
        pair.append((train_model, eval_model))
    pair[1][0].set_weights(pair[0][0].get_weights())
    return pair


def alternating_medians(fns, steps, warmup):
    """Median seconds of each fn, timed in turns (a, b, a, b, ...) so that a change in the
    machine's load falls on all of them alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    for _ in range(steps):
        for fn, t in zip(fns, times):
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return [sorted(t)[len(t) // 2] for t in times]


def compare_training_step(model, routings, x, y, steps, warmup, arch=None):
    """Whole training step (train_on_batch) of ours vs the seed-style capsule layer, timed
    alternately in this process; max_abs_diff compares their class scores first."""
    (ours, ours_eval), (seed, seed_eval) = build_trained_pair(model, routings, arch)
    scores = [m.predict_on_batch(x)[0] for m in (ours_eval, seed_eval)]  # [batch, n_class]
    diff = float(np.abs(scores[0] - scores[1]).max())
    ours_s, seed_s = alternating_medians(
        [lambda: ours.train_on_batch([x, y], [y, x]),
         lambda: seed.train_on_batch([x, y], [y, x])], steps, warmup)
    return {'step_ours_ms': 1000 * ours_s, 'step_seed_ms': 1000 * seed_s,
            'step_seed_over_ours': seed_s / ours_s, 'step_max_abs_diff': diff}


def compare_routing(routings, batch_size, steps, warmup):
    """Times ours vs the naive routing layer (forward + backward) on identical weights."""
    from tensors import evaluate, gradient_of_sum
    from capsulelayers import CapsuleLayer
    rng = np.random.RandomState(0)
    u = (rng.normal(size=(batch_size, 1152, 8)) * 0.1).astype('float32')
    ours = CapsuleLayer(10, 16, routings)
    naive = naive_capsule_layer_class()(10, 16, routings)
    evaluate(ours, u)
    evaluate(naive, u)
    naive.set_weights(ours.get_weights())
    diff = float(np.abs(evaluate(ours, u) - evaluate(naive, u)).max())
    out = {'max_abs_diff': diff}
    for name, layer in [('ours', ours), ('naive', naive)]:
        out[name + '_ms'] = 1000 * median_seconds(
            lambda: gradient_of_sum(layer, u), steps, warmup)
    return out


def run_worker(args, arch):
    """One configuration: times it and prints its RESULT line (and, with --profile on
    TensorFlow, its PROFILE line). arch: parse_arch(args.arch)."""
    import compat as C
    import capsulenet
    threads = C.configure_threads()  # CAPSNET_THREADS
    C.set_precision(args.precision)
    spec = capsulenet.MODELS[args.model]
    options = model_options(args.model, args.routings, arch)
    train_model, eval_model, _ = capsulenet.build_models(args.model, (28, 28, 1), 10, **options)
    capsulenet.compile_model(train_model, 1e-3, 0.392, spec, xla=args.xla)
    rng = np.random.RandomState(0)
    x = rng.rand(args.batch_size, 28, 28, 1).astype('float32')
    y = np.eye(10, dtype='float32')[rng.randint(0, 10, args.batch_size)]
    # capsule models: (image, label) -> (scores, reconstruction); a classifier: image -> label
    inputs, targets = (x, y) if spec.kind == 'classifier' else ([x, y], [y, x])
    train_s = median_seconds(lambda: train_model.train_on_batch(inputs, targets),
                             args.steps, args.warmup)
    infer_s = median_seconds(lambda: eval_model.predict_on_batch(x), args.steps, args.warmup)
    result = {'backend': C.BACKEND, 'keras': C.keras.__version__, 'model': args.model,
              # None: the model has no routing (efficient, cnn), timed once whatever --routings
              'routings': args.routings if 'routings' in options else None,
              'batch_size': args.batch_size,
              'threads': threads or 'default', 'precision': args.precision, 'xla': args.xla,
              'train_ms_per_step': round(1000 * train_s, 1),
              'train_images_per_s': round(args.batch_size / train_s, 1),
              'infer_images_per_s': round(args.batch_size / infer_s, 1)}
    if args.compare and 'routings' in spec.flags:
        measured = compare_routing(args.routings, args.batch_size, args.steps, args.warmup)
        measured.update(compare_training_step(args.model, args.routings, x, y, args.steps,
                                              args.warmup, arch))
        result.update({k: round(v, 6 if 'diff' in k else 2 if 'over' in k else 1)
                       for k, v in measured.items()})
    if arch:
        result['arch'] = args.arch
    # the model's memory: read before the matmul's matrices and the profile's tensors exist
    result['peak_rss_mb'] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024., 1)
    result.update(arithmetic(train_model, args, train_s))
    print('RESULT ' + json.dumps(result), flush=True)
    if args.profile and C.KERAS3 and C.BACKEND == 'tensorflow':
        import profile_step
        parts = profile_step.profile(train_model, inputs, targets, args.steps, args.warmup,
                                     train_s, result['matmul_gflops'])
        print('PROFILE ' + json.dumps({'config': config_label(result), 'parts': parts}),
              flush=True)


def arithmetic(train_model, args, train_s):
    """The step against this machine's limit: its FLOPs per image (layer_flops), GFLOP/s,
    the matmul GFLOP/s in its precision (measured now) and the fraction of it reached."""
    flops = training_flops(train_model)
    gflops = flops * args.batch_size / train_s / 1e9
    limit = matmul_gflops(args.precision, args.matmul_size)
    return {'train_gflop_per_image': round(flops / 1e9, 6), 'gflops': round(gflops, 3),
            'matmul_gflops': round(limit, 2), 'matmul_size': args.matmul_size,
            'fraction_of_matmul': round(gflops / limit, 4)}


# ---------------------------------------------------------------- parent (table)
COLUMNS = [('backend', 'backend'), ('model', 'model'), ('routings', 'routings'),
           ('train_ms_per_step', 'train ms/step'), ('train_images_per_s', 'train img/s'),
           ('gflops', 'train GFLOP/s'), ('matmul_gflops', 'matmul GFLOP/s'),
           ('fraction_of_matmul', 'of matmul'), ('infer_images_per_s', 'infer img/s'),
           ('peak_rss_mb', 'peak RSS MB'),
           ('threads', 'threads'), ('precision', 'precision'), ('xla', 'xla'),
           ('arch', 'arch'),
           ('ours_ms', 'routing ours ms'), ('naive_ms', 'routing naive ms'),
           ('max_abs_diff', 'routing max diff'),
           ('step_ours_ms', 'step ours ms'), ('step_seed_ms', 'step seed-style ms'),
           ('step_seed_over_ours', 'seed-style / ours'),
           ('step_max_abs_diff', 'scores max diff')]


def table(results):
    cols = [(k, t) for k, t in COLUMNS if any(k in r for r in results)]
    lines = ['| ' + ' | '.join(t for _, t in cols) + ' |', '|' + '---|' * len(cols)]
    for r in results:
        lines.append('| ' + ' | '.join('' if r.get(k) is None else str(r[k]) for k, _ in cols) + ' |')
    return '\n'.join(lines)


def ratios(results):
    """Lines 'backend model rN: S / B training img/s = R' for each row whose settings S
    (precision != off, xla != auto) differ from the default-settings row B of the same
    configuration measured in the same bench run: 'bf16 / off', 'xla on / xla auto',
    'bf16 + xla on / off + xla auto'."""
    lines = []
    key = lambda r: (r['backend'], r['model'], r['routings'])
    settings = lambda r: (r.get('precision', 'off'), r.get('xla', 'auto'))
    base = {key(r): r for r in results if settings(r) == ('off', 'auto')}
    for r in results:
        precision, xla = settings(r)
        if (precision, xla) == ('off', 'auto') or key(r) not in base:
            continue
        changed = [(precision, 'off')] if precision != 'off' else []
        changed += [('xla ' + xla, 'xla auto')] if xla != 'auto' else []
        lines.append('%s %s%s: %s / %s training img/s = %.2f' % (
            r['backend'], r['model'], routing_label(r['routings']),
            ' + '.join(c[0] for c in changed), ' + '.join(c[1] for c in changed),
            r['train_images_per_s'] / base[key(r)]['train_images_per_s']))
    return lines


def routing_label(routings):
    return '' if routings is None else ' r%d' % routings


def config_label(r):
    """'tensorflow capsnet r3 bf16 xla auto': one configuration of a bench run."""
    return '%s %s%s %s xla %s' % (r['backend'], r['model'], routing_label(r['routings']),
                                  r['precision'], r['xla'])


def run_parent(args, configs):
    """Runs each of configs (from validated(args)) in its own worker; prints the table, the
    ratio lines, the FLOP rule and, with --profile, each configuration's step profile."""
    results, profiles, no_routing = [], [], set()  # no_routing: (backend, model, precision, xla)
    for backend, model, routings, precision, xla in configs:
        if (backend, model, precision, xla) in no_routing:
            continue
        cmd = [sys.executable, os.path.abspath(__file__), '--worker', '--model', model,
               '--routings', str(routings), '--batch_size', str(args.batch_size),
               '--steps', str(args.steps), '--warmup', str(args.warmup),
               '--precision', precision, '--xla', xla, '--matmul_size', str(args.matmul_size)]
        cmd += ['--compare'] if args.compare else []
        cmd += ['--profile'] if args.profile else []
        cmd += ['--arch', args.arch] if args.arch else []
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL='3')
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True)
        found = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
        if proc.returncode != 0 or not found:
            tail = (proc.stderr.strip().splitlines() or ['no output'])[-1]
            print('%s %s r%d failed: %s' % (backend, model, routings, tail), file=sys.stderr)
            continue
        results.append(json.loads(found[-1][len('RESULT '):]))
        profiles += [json.loads(l[len('PROFILE '):]) for l in proc.stdout.splitlines()
                     if l.startswith('PROFILE ')]
        if results[-1]['routings'] is None:
            no_routing.add((backend, model, precision, xla))
        print(json.dumps(results[-1]), flush=True)
    text = '\n'.join([table(results)] + ratios(results) + [FLOP_RULE + '.'] +
                     profile_tables(profiles, results if args.profile else []))
    print(text)
    if args.out:
        with atomic_write(args.out) as tmp, open(tmp, 'w') as f:
            f.write(text + '\n')
    return 0 if results else 1


def profile_tables(profiles, results):
    """Markdown, per profiled configuration: each part of its training step (ms, share of the
    step, GFLOP/s and fraction of the matmul rate where it does matrix products); a line for
    the rows of backends the profile does not cover."""
    import profile_step
    lines = []
    for p in profiles:
        lines += ['', 'Step profile, %s:' % p['config'], profile_step.table(p['parts'])]
    done = set(p['config'] for p in profiles)
    lines += ['%s: no step profile (--profile: TensorFlow on Keras 3 only)' % config_label(r)
              for r in results if config_label(r) not in done]
    return lines

class Parser(argparse.ArgumentParser):
    """argparse whose errors (an unknown flag, a flag's missing or non-integer value) are a
    UserError: main prints them as its one `error:` line."""

    def error(self, message):
        raise UserError(message)


def items(text, flag, allowed=None, kind=str, low=None):
    """The comma-separated values of a flag, each of kind, >= low, in allowed: a UserError
    naming the first that is not."""
    values = []
    for item in (text or '').split(','):
        try:
            value = kind(item.strip())
        except ValueError:
            raise UserError('--%s %r: expected %s values' % (flag, item, kind.__name__))
        if (allowed is not None and value not in allowed) or (low is not None and value < low):
            raise UserError('--%s %r: expected %s' % (flag, item, (
                'one of ' + ', '.join(allowed)) if allowed is not None else '>= %s' % low))
        values.append(value)
    return values


def validated(args):
    """The configurations [(backend, model, routings, precision, xla)] of the parent's flags,
    every value checked before any worker starts (a UserError names the first bad one). The
    backend names are checked before Keras is imported here, with the first of them."""
    backends = items(args.backends, 'backends', BACKENDS)
    for backend in backends:
        if importlib.util.find_spec(backend) is None:
            raise UserError('--backends %s: %s is not installed' % (backend, backend))
    if 'keras' not in sys.modules:  # this process imports Keras to check the rest
        os.environ['KERAS_BACKEND'] = backends[0]
    import compat as C
    import capsulenet
    import runsetup
    for flag, low in (('batch_size', 1), ('steps', 1), ('warmup', 0), ('matmul_size', 1)):
        if getattr(args, flag) < low:
            raise UserError('--%s %d: expected >= %d' % (flag, getattr(args, flag), low))
    models = items(args.models, 'models', sorted(capsulenet.MODELS))
    for key, value in parse_arch(args.arch).items():
        for model in models:
            flags = [f for f in capsulenet.ARCH_FLAGS if f in capsulenet.MODELS[model].flags]
            if key not in flags:
                raise UserError('--arch %s: not an architecture option of --model %s (%s)'
                                % (key, model, ', '.join(flags) or 'it has none'))
        if value < 1:
            raise UserError('--arch %s=%d: expected >= 1' % (key, value))
    if args.out:
        folder = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(folder) or os.path.isdir(args.out):
            raise UserError('--out %s: %s' % (args.out, 'is a folder' if os.path.isdir(args.out)
                                              else 'no such folder: %s' % folder))
    return [(backend, model, routings, precision, xla) for backend in backends
            for model in models for routings in items(args.routings, 'routings', kind=int, low=1)
            for precision in items(args.precision, 'precision', list(C.PRECISIONS))
            for xla in items(args.xla, 'xla', list(runsetup.XLA_MODES))]


def main(argv=None):
    """The command line: the parent (checks the flags, runs one worker per configuration,
    prints the tables) or, with --worker, one configuration. Bad input: one `error:` line on
    stderr, exit 2."""
    p = Parser(description='Speed and memory of CapsNet training/inference.')
    p.add_argument('--backends', default=os.environ.get('KERAS_BACKEND', 'tensorflow'),
                   help='comma-separated Keras backends (%s), each run in its own process'
                        % ', '.join(BACKENDS))
    p.add_argument('--models', default='capsnet', help='comma-separated --model names')
    p.add_argument('--routings', default='1,2,3', help='comma-separated routing iterations')
    p.add_argument('--batch_size', type=int, default=100)
    p.add_argument('--steps', type=int, default=20, help='timed steps (median reported)')
    p.add_argument('--warmup', type=int, default=3, help='untimed steps first (compilation)')
    p.add_argument('--compare', action='store_true',
                   help="also time the seed's naive routing, and the whole training step "
                        "with the seed-style capsule layer, on the same weights")
    p.add_argument('--precision', default='off',
                   help='comma-separated --mixed_precision settings (off, bf16, fp16); with '
                        'off and another, their training img/s ratio is printed')
    p.add_argument('--xla', default='auto',
                   help="comma-separated --xla settings (auto, on: TensorFlow's steps compiled "
                        "with XLA); with auto and on, their training img/s ratio is printed")
    p.add_argument('--arch', default='',
                   help='architecture options for the model builder, NAME=INTEGER comma-separated '
                        '(e.g. conv1_filters=64,primary_channels=8; default: the paper\'s)')
    p.add_argument('--matmul_size', type=int, default=MATMUL_SIZE,
                   help='N of the [N, N] x [N, N] matmul each worker times as the machine\'s '
                        'limit (default %(default)s)')
    p.add_argument('--profile', action='store_true',
                   help='also break one training step into its parts (TensorFlow on Keras 3: '
                        'benchmarks/profile_step.py)')
    p.add_argument('--out', default=None, help='also write the markdown table to this file')
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--model', default='capsnet', help=argparse.SUPPRESS)

    def body():
        args = p.parse_args(argv)
        arch = parse_arch(args.arch)
        if args.worker:
            args.routings = int(args.routings)
            return run_worker(args, arch)
        return run_parent(args, validated(args))
    return run_cli(body)


if __name__ == '__main__':
    sys.exit(main())
