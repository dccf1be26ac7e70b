"""Training / inference speed and memory of the models, per Keras backend.

    python benchmarks/bench.py                                 # CapsNet, routings 1/2/3, this backend
    python benchmarks/bench.py --backends tensorflow,torch,jax --compare
    python benchmarks/bench.py --steps 2 --warmup 1 --routings 3 --batch_size 8   # smoke test
    python benchmarks/bench.py --arch conv1_filters=64,primary_channels=8   # a smaller CapsNet
    CAPSNET_THREADS=1 python benchmarks/bench.py --routings 3    # ops on one thread per process
    python benchmarks/bench.py --routings 3 --xla auto,on      # TensorFlow with and without XLA

Each configuration runs in its own process (clean peak RSS, one backend per process) and
prints one JSON line; the parent prints a markdown table. Figures are medians over --steps
timed steps after --warmup untimed ones, on random inputs of MNIST shape.
--compare also times the seed's routing (per-sample map_fn over inputs tiled once per output
capsule, then batch_dot) on the same weights, and checks that both give the same capsules;
and the whole training step of the model with that seed-style capsule layer against ours,
the two timed in turns in one process, with the ratio (what a user of either would see).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# ---------------------------------------------------------------- worker (one config)
def naive_capsule_layer_class():
    """CapsuleLayer with û and routing written the way the seed repo does it."""
    import compat as C
    from capsulelayers import CapsuleLayer, squash

    class NaiveCapsuleLayer(CapsuleLayer):
        def predictions(self, inputs):
            # [batch, out, in_num, d_in]: the inputs copied once per output capsule
            tiled = C.tile(C.expand_dims(inputs, 1), (1, self.num_capsule, 1, 1))
            # per sample: keras-2.2.4 batch_dot(x [out,in,d_in], W [out,in,d_out,d_in], [2, 3])
            return C.map_fn(lambda x: C.einsum('jik,jiok->jio', x, self.W), tiled)

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
            raise SystemExit('error: --arch %r: expected NAME=INTEGER items' % item)
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
    import numpy as np
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
    import numpy as np
    import compat as C
    from capsulelayers import CapsuleLayer
    rng = np.random.RandomState(0)
    u = (rng.normal(size=(batch_size, 1152, 8)) * 0.1).astype('float32')
    ours = CapsuleLayer(10, 16, routings)
    naive = naive_capsule_layer_class()(10, 16, routings)
    C.evaluate(ours, u)
    C.evaluate(naive, u)
    naive.set_weights(ours.get_weights())
    diff = float(np.abs(C.evaluate(ours, u) - C.evaluate(naive, u)).max())
    out = {'max_abs_diff': diff}
    for name, layer in [('ours', ours), ('naive', naive)]:
        out[name + '_ms'] = 1000 * median_seconds(
            lambda: C.gradient_of_sum(layer, u), steps, warmup)
    return out


def run_worker(args, arch):
    """One configuration: times it and prints its RESULT line. arch: parse_arch(args.arch)."""
    import numpy as np
    sys.path.insert(0, ROOT)
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
    result['peak_rss_mb'] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024., 1)
    print('RESULT ' + json.dumps(result), flush=True)


# ---------------------------------------------------------------- parent (table)
COLUMNS = [('backend', 'backend'), ('model', 'model'), ('routings', 'routings'),
           ('train_ms_per_step', 'train ms/step'), ('train_images_per_s', 'train img/s'),
           ('infer_images_per_s', 'infer img/s'), ('peak_rss_mb', 'peak RSS MB'),
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


def run_parent(args):
    import backends
    for backend in args.backends.split(','):  # one line here, not one per worker
        problem = backends.missing(backend)
        if problem:
            raise SystemExit('error: --backends: %s' % problem)
    results, no_routing = [], set()  # no_routing: (backend, model, precision, xla) timed once
    configs = [(backend, model, int(routings), precision, xla)
               for backend in args.backends.split(',') for model in args.models.split(',')
               for routings in args.routings.split(',') for precision in args.precision.split(',')
               for xla in args.xla.split(',')]
    for backend, model, routings, precision, xla in configs:
        if (backend, model, precision, xla) in no_routing:
            continue
        cmd = [sys.executable, os.path.abspath(__file__), '--worker', '--model', model,
               '--routings', str(routings), '--batch_size', str(args.batch_size),
               '--steps', str(args.steps), '--warmup', str(args.warmup),
               '--precision', precision, '--xla', xla]
        cmd += ['--compare'] if args.compare else []
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
        if results[-1]['routings'] is None:
            no_routing.add((backend, model, precision, xla))
        print(json.dumps(results[-1]), flush=True)
    text = '\n'.join([table(results)] + ratios(results))
    print(text)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text + '\n')
    return 0 if results else 1


def main(argv=None):
    p = argparse.ArgumentParser(description='Speed and memory of CapsNet training/inference.')
    p.add_argument('--backends', default=os.environ.get('KERAS_BACKEND', 'tensorflow'),
                   help='comma-separated Keras backends, each run in its own process')
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
    p.add_argument('--out', default=None, help='also write the markdown table to this file')
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--model', default='capsnet', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    arch = parse_arch(args.arch)  # a malformed --arch is one line here, not one per worker
    if args.worker:
        args.routings = int(args.routings)
        return run_worker(args, arch)
    return run_parent(args)


if __name__ == '__main__':
    sys.path.insert(0, ROOT)
    import safeio
    safeio.interrupt_is_one_line()  # a worker's Keras backend that cannot load: one line
    sys.exit(main())
