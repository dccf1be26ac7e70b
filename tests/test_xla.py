"""--xla on: TensorFlow's training step compiled with XLA equals the default one; where it
cannot hold (--seed, several devices, -t, PyTorch, keras 2.2.4) it is one error line."""
import numpy as np
import pytest

import compat as C
import capsulenet
import helpers
import runsetup

KERAS3_TF = C.KERAS3 and C.BACKEND == 'tensorflow'
needs_tf = pytest.mark.skipif(not KERAS3_TF, reason='XLA through jit_compile: Keras 3 + TF')


@pytest.fixture
def determinism():
    """TensorFlow's op-determinism switch, off for the test (an earlier --seed run in this
    process leaves it on), put back as it was after it: the function sets it."""
    from tensorflow.python.framework import config  # Keras reads the switch from here too
    was = config.is_op_determinism_enabled()

    def switch(on):
        (config.enable_op_determinism if on else config.disable_op_determinism)()
    switch(False)
    yield switch
    switch(was)


def one_step(model, xla, x, y):
    """Compiles model (--xla xla), one train_on_batch -> (loss, weights after it)."""
    capsulenet.compile_model(model, 1e-3, 0.392, xla=xla)
    loss = model.train_on_batch([x, y], [y, x])[0]
    return float(loss), model.get_weights()


@needs_tf
def test_xla_step_equals_the_default_step(determinism):
    C.clear_session(free_memory=False)
    default = capsulenet.CapsNet((28, 28, 1), 10, 3, **helpers.NANO)[0]
    xla = capsulenet.CapsNet((28, 28, 1), 10, 3, **helpers.NANO)[0]
    xla.set_weights(default.get_weights())
    rng = np.random.RandomState(0)
    x = rng.rand(8, 28, 28, 1).astype('float32')
    y = np.eye(10, dtype='float32')[rng.randint(0, 10, 8)]
    start = default.get_weights()
    loss, after = one_step(default, 'auto', x, y)
    xla_loss, xla_after = one_step(xla, 'on', x, y)
    assert xla.jit_compile is True and default.jit_compile is False  # a CPU-only machine
    np.testing.assert_allclose(xla_loss, loss, rtol=1e-5)
    for w0, w, w_xla in zip(start, after, xla_after):
        # Adam's first step moves a weight by ~lr (1e-3): its steps differ by ~4e-9 here
        np.testing.assert_allclose(w_xla - w0, w - w0, rtol=0, atol=1e-6)


@needs_tf
def test_determinism_left_on_is_one_error_not_a_silent_fallback(determinism):
    determinism(True)  # as an earlier --seed run in this process leaves it
    C.clear_session(free_memory=False)
    model = capsulenet.CapsNet((28, 28, 1), 10, 1, **helpers.NANO)[0]
    with pytest.warns(UserWarning), pytest.raises(C.UserError, match='without XLA'):
        capsulenet.compile_model(model, 1e-3, xla='on')


# PyTorch and keras 2.2.4 refuse --xla on; JAX takes it (its steps are XLA programs anyway)
ELSEWHERE = None if C.KERAS3 and C.BACKEND == 'jax' else 'needs Keras 3 with the tensorflow'


def on_tf(message):
    """The error (or None: accepted) of these flags: message on Keras 3 + TF, else ELSEWHERE."""
    return message if KERAS3_TF else ELSEWHERE


@pytest.mark.stack
@pytest.mark.parametrize('flags, message', [
    (['--xla', 'on', '-t'], 'does nothing with -t'),
    (['--xla', 'on', '--seed', '0'], on_tf('drop one of them')),
    (['--xla', 'on', '--multi_gpu', '2'], on_tf('for training on one device')),
    (['--xla', 'on'], on_tf(None)),
])
def test_xla_where_it_cannot_hold_is_one_line(capsys, tmp_path, flags, message):
    if message is None:  # this stack accepts the flags: checked without training
        args = capsulenet.build_parser().parse_args(flags)
        seeded, distributed = args.seed is not None, args.multi_gpu > 1
        options = runsetup.xla_compile_options(args.xla, seeded, distributed, args.testing)
        assert options == ({'jit_compile': True} if KERAS3_TF else {})
        return
    code, _, err = helpers.run_main(capsys, *(flags + ['--save_dir', tmp_path / 'run',
                                                       '--data_dir', tmp_path / 'nowhere']))
    helpers.assert_one_error_line(code, err, message)
    assert not (tmp_path / 'run' / 'log.csv').exists()
