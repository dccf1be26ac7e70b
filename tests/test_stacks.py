"""Same weights => same outputs on every stack (keras 2.2.4, Keras 3 on TF / JAX / torch).

The fixtures in tests/fixtures/ hold one small CapsNet's weights written by keras 2.2.4's own
save_weights, by Keras 3's own save_weights (.weights.h5 layout), and by this repo's writer on
each stack, plus the outputs keras 2.2.4 computed on fixed inputs. CI runs this file on every
stack, so each stack reads what every other stack wrote.
"""
import os

import numpy as np
import pytest

import h5weights  # noqa: E402
from fixtures import make_fixtures as F

pytestmark = pytest.mark.stack

WRITTEN_BY_US = ['keras224', 'tensorflow', 'jax', 'torch']


def assert_expected_outputs(models):
    expected = np.load(F.EXPECTED)
    got = F.outputs(models)
    for key in ['lengths', 'recon', 'recon_manipulated']:
        np.testing.assert_allclose(got[key], expected[key], atol=1e-4, err_msg=key)


def fixture_files():
    files = [('keras224-save_weights', F.LEGACY_FILE),
             ('keras3-save_weights', F.KERAS3_NATIVE_FILE)]
    return files + [('ours-' + stack, F.ours_file(stack)) for stack in WRITTEN_BY_US]


@pytest.fixture(scope='module')
def models():
    """One build of the fixture CapsNet for the loading tests: each load sets every weight, and
    its predict functions are traced once (~1 s a test otherwise). Its weights are wiped
    between tests, so no test can pass on the weights an earlier one loaded."""
    return F.build()


@pytest.fixture
def wiped(models):
    models[0].set_weights([np.full_like(w, np.nan) for w in models[0].get_weights()])
    return models


@pytest.mark.parametrize('path', [p for _, p in fixture_files()], ids=[n for n, _ in fixture_files()])
def test_every_writers_file_gives_the_same_outputs_here(path, wiped):
    assert os.path.isfile(path), 'missing fixture %s: see tests/fixtures/make_fixtures.py' % path
    h5weights.load_weights_h5(wiped[0], path)
    assert_expected_outputs(wiped)


@pytest.mark.parametrize('stack', ['keras224'] + WRITTEN_BY_US[1:])
def test_this_kerass_own_reader_loads_our_files(stack, wiped):
    """Our legacy-layout files need no code of ours to load: Keras's load_weights reads them."""
    wiped[0].load_weights(F.ours_file(stack))
    assert_expected_outputs(wiped)


def test_this_kerass_own_reader_loads_keras224s_own_file(wiped):
    """What keras 2.2.4's save_weights wrote loads with Keras's own reader on every stack (on
    keras 2.2.4 itself: tests/legacy/shim restoration 5, h5py 2's string attributes)."""
    wiped[0].load_weights(F.LEGACY_FILE)
    assert_expected_outputs(wiped)


# last in this file: F.build() clears the Keras session (on keras 2.2.4, the graph the shared
# models above live in)
def test_our_writer_round_trips_here(tmp_path, wiped):
    h5weights.load_weights_h5(wiped[0], F.LEGACY_FILE)
    path = str(tmp_path / 'trained_model.h5')
    h5weights.save_weights_h5(wiped[0], path)
    fresh = F.build()
    fresh[0].load_weights(path)
    assert_expected_outputs(fresh)


def test_stack_is_what_ci_asked_for():
    """CI sets CAPSNET_EXPECT_STACK per run, so a misconfigured stack cannot pass silently."""
    wanted = os.environ.get('CAPSNET_EXPECT_STACK')
    if wanted is None:
        pytest.skip('CAPSNET_EXPECT_STACK not set (CI sets it)')
    assert F.STACK == wanted
