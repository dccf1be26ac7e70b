"""--workers N: batches prepared in N processes give the same training as in-process batches."""
import os

import numpy as np

import compat as C
import h5weights  # noqa: E402
import capsulenet
import helpers

TINY = helpers.TINY_FLAGS + ['--batch_size', '25', '--seed', '0', '--epochs', '2']


def test_workers_give_the_same_weights(tmp_path):
    data_dir = str(tmp_path / 'mnist')
    helpers.fake_mnist(data_dir, 100, 20)
    weights = []
    for workers in (1, 3):
        save_dir = str(tmp_path / ('w%d' % workers))
        C.clear_session(free_memory=False)
        assert capsulenet.main(TINY + ['--workers', str(workers), '--data_dir', data_dir,
                                       '--save_dir', save_dir]) == 0
        model = capsulenet.CapsNet((28, 28, 1), 10, 3, **helpers.TINY)[0]
        h5weights.load_weights_h5(model, os.path.join(save_dir, 'trained_model.h5'))
        weights.append(model.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
