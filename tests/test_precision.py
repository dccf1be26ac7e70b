"""--mixed_precision: bf16/fp16 compute with float32 variables, capsule math in float32."""
import numpy as np
import pytest

import compat as C
import capsulenet
import h5weights
import helpers

pytestmark = pytest.mark.stack
keras3_only = pytest.mark.skipif(not C.KERAS3, reason='keras 2.2.4 has no dtype policies')


@pytest.fixture
def precision():
    """Sets a precision for one test and puts float32 back after it."""
    yield C.set_precision
    C.set_precision('off')


def tiny_capsnet(name='off'):
    C.clear_session(free_memory=False)  # Keras 3 resets the global policy here: set it after
    C.set_precision(name)
    return capsulenet.CapsNet((28, 28, 1), 10, 2, **helpers.NANO)


@keras3_only
@pytest.mark.parametrize('name, compute', [('bf16', 'bfloat16'), ('fp16', 'float16')])
def test_convolutions_in_low_precision_capsules_in_float32(precision, name, compute):
    train_model, eval_model, _ = tiny_capsnet(name)
    layers = {layer.name: layer for layer in train_model.layers}
    assert layers['conv1'].compute_dtype == compute
    assert layers['primarycap_conv2d'].compute_dtype == compute
    for capsule_layer in ('primarycap_squash', 'digitcaps', 'capsnet', 'mask'):
        assert layers[capsule_layer].compute_dtype == 'float32', capsule_layer
    assert all(w.dtype == np.float32 for w in train_model.get_weights())
    x = np.random.RandomState(0).rand(4, 28, 28, 1).astype('float32')
    lengths, recon = eval_model.predict(x, batch_size=4)
    assert lengths.dtype == np.float32 and np.all(np.isfinite(lengths))
    # lengths at initialisation are tiny (~1e-4): in float32 they are not rounded to 0
    assert np.all(lengths > 0)


@keras3_only
def test_fp16_compiles_with_loss_scaling(precision):
    train_model, _, _ = tiny_capsnet('fp16')
    capsulenet.compile_model(train_model, 1e-3, 0.392)
    assert 'LossScale' in type(train_model.optimizer).__name__


@keras3_only
@pytest.mark.train_cli
@pytest.mark.parametrize('name', ['bf16', 'fp16'])
def test_cli_trains_in_mixed_precision(precision, tmp_path, name):
    data_dir = str(tmp_path / 'mnist')
    helpers.fake_mnist(data_dir, 40, 20)
    C.clear_session(free_memory=False)
    code = capsulenet.main(['--mixed_precision', name, '--epochs', '1', '--batch_size', '20',
                            '--conv1_filters', '8', '--primary_channels', '2', '--seed', '0',
                            '--data_dir', data_dir, '--save_dir', str(tmp_path / 'run')])
    assert code == 0
    model = tiny_capsnet_cli()
    h5weights.load_weights_h5(model, str(tmp_path / 'run' / 'trained_model.h5'))
    assert all(np.isfinite(w).all() and w.dtype == np.float32 for w in model.get_weights())


def tiny_capsnet_cli():
    C.clear_session(free_memory=False)
    C.set_precision('off')
    return capsulenet.CapsNet((28, 28, 1), 10, 3, conv1_filters=8, primary_channels=2)[0]


@pytest.mark.skipif(C.KERAS3, reason='keras 2.2.4 only')
def test_keras224_refuses_low_precision_in_one_line():
    with pytest.raises(C.UserError, match='needs Keras 3'):
        C.set_precision('bf16')
    C.set_precision('off')
