"""One SGD step of a tiny CapsNet on 1 device and on N devices from the same weights and batch.

    python tests/one_step.py N                 # prints the per-weight max |difference| of the
                                               # two updates: 'ONE_STEP [json rows]'
    python tests/one_step.py N -- CLI ARGS...  # then capsulenet.main(CLI ARGS) in this process

Run in its own process by test_multidevice.py: the device count is fixed before the backend
starts (TensorFlow logical CPU devices; JAX needs XLA_FLAGS=--xla_force_host_platform_device_count).
The CLI run after it (--multi_gpu N) uses the devices set up here: one process start (~5 s of
imports) for both checks.
Plain SGD, so the update is lr * the gradient: a replica that sums instead of averaging (or
drops its share) changes the update by a factor, far beyond the summation-order noise.
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import compat as C  # noqa: E402
import capsulenet  # noqa: E402

BATCH = 8
LR = 100.  # steps well above float32 rounding: CapsNet's capsules start tiny, so do gradients


def one_step(n_devices, x, y, weights=None):
    """(weights before, weights after) one SGD step on the batch, on n_devices devices."""
    with C.distribution_scope(n_devices, BATCH) as parallel:
        model = capsulenet.build_models('capsnet', (28, 28, 1), 10, routings=2, conv1_filters=8,
                                        primary_channels=2, digit_dim=4)[0]
        if weights is not None:
            model.set_weights(weights)
        before = model.get_weights()
        fitted = parallel(model)
        fitted.compile(optimizer=C.optimizers.SGD(LR), loss=[capsulenet.margin_loss, 'mse'],
                       loss_weights=[1., 0.392])
        fitted.fit([x, y], [y, x], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        return before, model.get_weights()


def main(n_devices):
    C.set_seed(0)
    rng = np.random.RandomState(0)
    x = rng.rand(BATCH, 28, 28, 1).astype('float32')
    y = np.eye(10, dtype='float32')[rng.randint(0, 10, BATCH)]
    start, many = one_step(n_devices, x, y)  # first: TensorFlow sets up its devices once
    _, one = one_step(1, x, y, start)
    rows = []
    for w0, w1, wn in zip(start, one, many):
        step1, stepn = w1 - w0, wn - w0
        rows.append({'shape': list(w0.shape), 'scale': float(np.abs(w0).max()),
                     'step': float(np.abs(step1).max()),
                     'difference': float(np.abs(stepn - step1).max())})
    print('ONE_STEP ' + json.dumps(rows), flush=True)


if __name__ == '__main__':
    main(int(sys.argv[1]))
    if '--' in sys.argv:
        C.clear_session()
        sys.exit(capsulenet.main(sys.argv[sys.argv.index('--') + 1:]))
