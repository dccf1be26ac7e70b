"""The CapsNet graph: parameter count, layer names, masking, one training step, weights I/O."""
import numpy as np
import pytest

import compat as C
import h5weights  # noqa: E402
from capsulenet import CapsNet, compile_model
from helpers import SMALL

pytestmark = pytest.mark.stack



@pytest.fixture(scope='module')
def paper_models():
    C.clear_session(free_memory=False)
    return CapsNet((28, 28, 1), 10, 3)


def test_paper_parameter_count(paper_models):
    assert paper_models[0].count_params() == 8215568


def test_cnn_parameter_counts():
    # Table 1's MNIST baseline is the paper's 35.4M (no pooling, FC 328); the CNN of other data
    # sets is CapsNet-sized (two max-pools, FC 656), as §5.2's affNIST comparison asks
    import capsulenet
    counts = {}
    for name, shape, dataset, options in [
            ('mnist', (28, 28, 1), 'mnist', {}),
            ('pooled', (28, 28, 1), 'mnist', dict(pools=2, fc1_units=656)),
            ('affnist', (40, 40, 1), 'affnist', {})]:
        C.clear_session(free_memory=False)
        model = capsulenet.build_models('cnn', shape, 10, dataset, **options)[0]
        pools = [l for l in model.layers if l.__class__.__name__ == 'MaxPooling2D']
        counts[name] = (model.count_params(), len(pools))
    assert counts == {'mnist': (35445522, 0), 'pooled': (6707802, 2), 'affnist': (10990170, 2)}


def test_layer_names_follow_capsnet_keras(paper_models):
    names = [layer.name for layer in paper_models[0].layers]
    for name in ['conv1', 'primarycap_conv2d', 'primarycap_reshape', 'primarycap_squash',
                 'digitcaps', 'capsnet', 'mask', 'decoder']:
        assert name in names
    decoder = paper_models[0].get_layer('decoder')
    assert [l.__class__.__name__ for l in decoder.layers] == ['Dense', 'Dense', 'Dense', 'Reshape']
    assert C.int_shape(paper_models[0].get_layer('digitcaps').output)[1:] == (10, 16)
    assert C.int_shape(paper_models[0].get_layer('primarycap_squash').output)[1:] == (1152, 8)


def test_eval_model_reconstructs_from_longest_capsule():
    C.clear_session(free_memory=False)
    train_model, eval_model, manipulate_model = CapsNet((28, 28, 1), 10, 2, **SMALL)
    rng = np.random.RandomState(0)
    x = rng.rand(6, 28, 28, 1).astype('float32')
    lengths, recon = eval_model.predict(x, verbose=0)
    y_longest = np.eye(10, dtype='float32')[lengths.argmax(1)]
    zero = np.zeros((6, 10, 8), dtype='float32')
    recon_longest = manipulate_model.predict([x, y_longest, zero], verbose=0)
    np.testing.assert_allclose(recon, recon_longest, atol=1e-5)
    _, recon_by_label = train_model.predict([x, y_longest], verbose=0)
    np.testing.assert_allclose(recon, recon_by_label, atol=1e-5)


def test_one_training_step_lowers_the_loss():
    C.clear_session(free_memory=False)
    C.set_seed(0)
    model, _, _ = CapsNet((28, 28, 1), 10, 3, **SMALL)
    compile_model(model, 1e-3, 0.392)
    rng = np.random.RandomState(0)
    x = rng.rand(16, 28, 28, 1).astype('float32')
    y = np.eye(10, dtype='float32')[rng.randint(0, 10, 16)]
    before = model.evaluate([x, y], [y, x], verbose=0)[0]
    for _ in range(3):
        model.train_on_batch([x, y], [y, x])
    after = model.evaluate([x, y], [y, x], verbose=0)[0]
    assert after < before


@pytest.mark.skipif(not C.KERAS3, reason='keras 2.2.4 builds its train function once')
def test_fit_traces_the_train_step_once():
    # Keras 3 + TensorFlow traced it twice (its first trace built the loss trackers' variables)
    # until compat.fit built them first; JAX traces once; torch runs it eagerly, once per step
    import batches as B
    C.clear_session(free_memory=False)
    model, _, _ = CapsNet((28, 28, 1), 10, 1, **SMALL)
    compile_model(model, 1e-3, 0.392)
    calls = []
    step = model.train_step
    model.train_step = lambda *args: calls.append(1) or step(*args)
    rng = np.random.RandomState(0)
    x = rng.rand(8, 28, 28, 1).astype('float32')
    y = np.eye(10, dtype='float32')[rng.randint(0, 10, 8)]
    C.fit(model, B.ShiftedBatches(x, y, 4, 0, seed=0), epochs=1, verbose=0)
    assert len(calls) == (2 if C.BACKEND == 'torch' else 1)


@pytest.mark.skipif(not C.KERAS3, reason='keras 2.2.4 validates at the training batch size')
def test_training_validates_at_the_training_batch_size(tmp_path):
    # Keras 3 validates arrays 32 at a time unless told: 3x the steps of batch 100
    import batches as B
    import training
    from helpers import NANO
    from runfolder import RunFolder
    C.clear_session(free_memory=False)
    model, _, _ = CapsNet((28, 28, 1), 10, 1, **NANO)
    compile_model(model, 1e-3, 0.392)
    rng = np.random.RandomState(0)
    x = rng.rand(12, 28, 28, 1).astype('float32')
    y = np.eye(10, dtype='float32')[rng.randint(0, 10, 12)]
    sizes = []

    class Sizes(C.callbacks.Callback):
        def on_test_batch_begin(self, batch, logs=None):
            sizes.append(batch)

    folder = RunFolder(str(tmp_path))
    folder.prepare()
    training.train(model, B.ShiftedBatches(x[:8], y[:8], 4, 0, seed=0),
                   ([x, y], [y, x]), folder, 1, lambda epoch: 1e-3, 'val_capsnet_accuracy',
                   extra_callbacks=[Sizes()])
    assert sizes == [0, 1, 2]  # 12 validation images, 4 a batch


def test_weights_round_trip_through_legacy_h5(tmp_path):
    C.clear_session(free_memory=False)
    model, eval_model, _ = CapsNet((28, 28, 1), 10, 3, **SMALL)
    x = np.random.RandomState(1).rand(3, 28, 28, 1).astype('float32')
    expected = eval_model.predict(x, verbose=0)
    path = str(tmp_path / 'trained_model.h5')
    h5weights.save_weights_h5(model, path)
    C.clear_session(free_memory=False)
    model2, eval2, _ = CapsNet((28, 28, 1), 10, 3, **SMALL)
    h5weights.load_weights_h5(model2, path)
    got = eval2.predict(x, verbose=0)
    for a, b in zip(expected, got):
        np.testing.assert_allclose(a, b, atol=1e-6)
    import h5py
    with h5py.File(path, 'r') as f:
        assert 'layer_names' in f.attrs and 'keras_version' in f.attrs
        assert 'digitcaps/W:0' in [n.decode() for n in f['digitcaps'].attrs['weight_names']]


def test_loading_other_architecture_names_layer_and_shapes(tmp_path):
    C.clear_session(free_memory=False)
    model, _, _ = CapsNet((28, 28, 1), 5, 3, **SMALL)
    path = str(tmp_path / 'five.h5')
    h5weights.save_weights_h5(model, path)
    C.clear_session(free_memory=False)
    model10, _, _ = CapsNet((28, 28, 1), 10, 3, **SMALL)
    with pytest.raises(C.UserError) as err:
        h5weights.load_weights_h5(model10, path)
    assert 'digitcaps' in str(err.value) and '(10, ' in str(err.value) and '(5, ' in str(err.value)
    assert 'architecture flags' in str(err.value)  # what to check, e.g. --pools of a CNN
