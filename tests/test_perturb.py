"""The capsule-dimension perturbation viewer, headless (Agg): sliders, reset, image chooser,
and the `python viewer.py` command."""
import matplotlib
matplotlib.use('Agg')
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import compat as C  # noqa: E402
import h5weights  # noqa: E402
import capsulenet  # noqa: E402
import viewer as V  # noqa: E402
from helpers import MINI, assert_one_error_line, run_main, run_script  # noqa: E402

pytestmark = pytest.mark.stack



@pytest.fixture(scope='module')
def viewer():
    C.clear_session(free_memory=False)
    C.set_seed(0)
    _, eval_model, manipulate_model = capsulenet.CapsNet((28, 28, 1), 10, 1, **MINI)
    images = np.random.RandomState(0).rand(4, 28, 28, 1).astype('float32')
    return V.PerturbationViewer(eval_model, manipulate_model, images, index=1)


def recon(viewer):
    return np.array(viewer.recon_image.get_array(), dtype='float64')


def test_viewer_widgets(viewer):
    assert len(viewer.sliders) == 16
    for slider in viewer.sliders:
        assert (slider.valmin, slider.valmax, slider.valstep) == (-0.30, 0.30, 0.05)
        assert slider.val == pytest.approx(0, abs=1e-9)
    assert viewer.noise().shape == (1, 10, 16)
    assert viewer.index == 1 and viewer.index_slider.val == 1
    assert len(viewer.bars) == 10
    heights = [bar.get_height() for bar in viewer.bars]
    assert int(np.argmax(heights)) == viewer.label


def test_slider_changes_reconstruction_and_reset_restores_it(viewer):
    before = recon(viewer)
    viewer.sliders[3].set_val(0.25)
    assert viewer.noise()[0, viewer.label, 3] == pytest.approx(0.25)
    moved = recon(viewer)
    assert np.abs(moved - before).max() > 1e-4
    viewer.reset()
    assert not viewer.noise().any()
    np.testing.assert_allclose(recon(viewer), before, atol=1e-6)


def click(figure, ax):
    """A left click (press, release) in the middle of ax, through the canvas' public events."""
    from matplotlib.backend_bases import MouseEvent
    figure.canvas.draw()
    x, y = ax.transAxes.transform((0.5, 0.5))
    for name in ('button_press_event', 'button_release_event'):
        figure.canvas.callbacks.process(name, MouseEvent(name, figure.canvas, x, y, button=1))


def test_reset_button_is_wired(viewer):
    before = recon(viewer)
    viewer.sliders[0].set_val(-0.3)
    click(viewer.figure, viewer.reset_button.ax)
    np.testing.assert_allclose(recon(viewer), before, atol=1e-6)


def test_image_chooser_switches_input(viewer):
    shown = np.array(viewer.input_image.get_array())
    viewer.sliders[5].set_val(0.1)
    viewer.index_slider.set_val(2)
    assert viewer.index == 2
    np.testing.assert_allclose(viewer.input_image.get_array(), viewer.images[2, ..., 0])
    assert not np.allclose(viewer.input_image.get_array(), shown)
    assert not viewer.noise().any()  # a new image starts unperturbed
    viewer.figure.canvas.draw()


def run_viewer(*args):
    proc = run_script('viewer.py', *args, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_perturb_command_writes_figure(tmp_path, capsys):
    arch = ['--conv1_filters', '8', '--primary_channels', '2', '--primary_dim', '4']
    C.clear_session(free_memory=False)
    model = capsulenet.build_models('capsnet', (28, 28, 1), 10, conv1_filters=8,
                                    primary_channels=2, primary_dim=4)[0]
    weights = str(tmp_path / 'w.h5')
    h5weights.save_weights_h5(model, weights)
    out = str(tmp_path / 'viewer.png')
    code, stdout, err = run_viewer('-w', weights, '--index', '2', '--test_samples', '5',
                                   '--out', out, *arch)
    assert code == 0, err[-3000:]
    import matplotlib.image
    assert matplotlib.image.imread(out).std() > 0.01
    # bad input in this process: the subprocess above is the command's smoke test
    code, stdout, err = run_main(capsys, '-w', str(tmp_path / 'missing.h5'),
                                 '--out', out, main=V.main)
    assert code == 2
    assert_one_error_line(code, err, 'weights file not found')
