"""The capsule-dimension perturbation viewer: move one capsule's dimensions, watch the decoder.

    python viewer.py -w result/trained_model.h5 [--model efficient] [--index 3]
    python viewer.py -w result/trained_model.h5 --out viewer.png   # headless: save the figure

Without a display (SSH, a server: matplotlib falls back to Agg) and without --out, the command
stops at once with one `error:` line saying to use --out, rather than showing nothing.

In a notebook, WidgetPanel(viewer) puts ipywidgets controls on it (notebooks/perturbation.ipynb).
"""
if __name__ == '__main__':  # before the imports below, which take seconds (TensorFlow)
    import safeio
    safeio.interrupt_is_one_line()

import contextlib
import sys

import numpy as np

import capsulenet
import compat as C
from h5weights import load_weights_h5
from safeio import OneLineParser, UserError, run_cli
from utils import load_mnist, save_figure


class PerturbationViewer(object):
    """Interactive figure: move the 16 dimensions of the winning capsule, watch the decoder.

    eval_model: image [batch, H, W, C] -> [lengths [batch, n_class], reconstruction];
    manipulate_model: [image, one-hot y [batch, n_class], noise [batch, n_class, dim]]
    -> reconstruction [batch, H, W, C] (the models capsulenet's builders return).
    images: [N, H, W, C] to choose from. Shows the input, the live reconstruction and the
    capsule lengths as bars; one slider per capsule dimension (+-value_range, step), an
    image-index slider and a Reset button. Works with any matplotlib backend (Agg in tests,
    %matplotlib widget in notebooks).
    """

    def __init__(self, eval_model, manipulate_model, images, index=0, value_range=0.30,
                 step=0.05):
        import matplotlib.pyplot as plt
        from matplotlib.widgets import Button, Slider
        self.eval_model, self.manipulate_model = eval_model, manipulate_model
        self.images = np.asarray(images, dtype='float32')
        if not len(self.images):
            raise UserError('no images to show in the perturbation viewer')
        self.n_class, self.dim = [int(d) for d in C.int_shape(manipulate_model.inputs[2])[1:]]
        self._muted = False
        self.figure = plt.figure(figsize=(11, 8))
        self.ax_input = self.figure.add_axes([0.03, 0.55, 0.28, 0.4])
        self.ax_recon = self.figure.add_axes([0.35, 0.55, 0.28, 0.4])
        self.ax_bars = self.figure.add_axes([0.70, 0.58, 0.27, 0.35])
        self.sliders = []
        with self.deferred_draws():  # each new Slider draws the figure otherwise (Agg)
            for d in range(self.dim):
                column, row = divmod(d, (self.dim + 1) // 2)
                ax = self.figure.add_axes([0.08 + 0.48 * column, 0.46 - 0.045 * row, 0.35, 0.03])
                slider = Slider(ax, 'dim %d' % d, -value_range, value_range, valinit=0.,
                                valstep=step)
                slider.on_changed(self.update)
                self.sliders.append(slider)
            ax_index = self.figure.add_axes([0.08, 0.04, 0.55, 0.03])
            self.index_slider = Slider(ax_index, 'image', 0, len(self.images) - 1,
                                       valinit=int(index), valstep=1, valfmt='%d')
        self.index_slider.on_changed(lambda value: self.select(int(value)))
        self.reset_button = Button(self.figure.add_axes([0.78, 0.03, 0.12, 0.05]), 'Reset')
        self.reset_button.on_clicked(self.reset)
        self.input_image = self.recon_image = self.bars = None
        self.select(int(index))

    @contextlib.contextmanager
    def deferred_draws(self):
        """No figure draws inside: on a non-interactive canvas (Agg: tests, --out, notebooks)
        draw_idle draws the whole figure at once (~0.3 s), so setting 16 sliders would draw it
        16 times. The next draw_idle or savefig after the block draws it once."""
        canvas = self.figure.canvas
        canvas.draw_idle = lambda *args, **kwargs: None  # shadows the method on this canvas
        try:
            yield
        finally:
            del canvas.draw_idle

    def _show(self, ax, image, current):
        image = image[..., 0] if image.shape[-1] == 1 else image
        if current is None:
            current = ax.imshow(image, cmap='gray', vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            current.set_data(image)
        return current

    def select(self, index):
        """Shows image `index`: its class is the longest capsule; sliders back to 0."""
        if not 0 <= index < len(self.images):
            raise UserError('image index %d out of range 0..%d' % (index, len(self.images) - 1))
        self.index = index
        self.x = self.images[index:index + 1]
        lengths = np.asarray(self.eval_model.predict(self.x, verbose=0)[0])[0]
        self.label = int(np.argmax(lengths))
        self.y = np.eye(self.n_class, dtype='float32')[[self.label]]
        self.input_image = self._show(self.ax_input, self.x[0], self.input_image)
        self.ax_input.set_title('input #%d' % index)
        self.ax_bars.clear()
        self.bars = self.ax_bars.bar(range(self.n_class), lengths, color='gray')
        self.bars[self.label].set_color('tab:red')
        self.ax_bars.set_ylim(0, 1)
        self.ax_bars.set_xticks(range(self.n_class))
        self.ax_bars.set_title('capsule lengths (class %d)' % self.label)
        self.reset()

    def noise(self):
        """Slider values on the winning capsule's row: [1, n_class, dim]."""
        noise = np.zeros((1, self.n_class, self.dim), dtype='float32')
        noise[0, self.label] = [round(s.val, 6) for s in self.sliders]  # snapping leaves 1e-17
        return noise

    def reconstruction(self):
        """Decoder output for the current image and slider values: [H, W, C]."""
        return np.asarray(self.manipulate_model.predict([self.x, self.y, self.noise()],
                                                        verbose=0))[0]

    def update(self, _value=None):
        if self._muted:
            return
        self.recon_image = self._show(self.ax_recon, self.reconstruction(), self.recon_image)
        self.ax_recon.set_title('reconstruction')
        self.figure.canvas.draw_idle()

    def reset(self, _event=None):
        """All dimension sliders back to 0, then one redraw."""
        self._muted = True
        try:
            with self.deferred_draws():
                for slider in self.sliders:
                    slider.reset()
        finally:
            self._muted = False
        self.update()


class WidgetPanel(object):
    """ipywidgets controls for a PerturbationViewer, for notebooks (Colab, Jupyter) where
    matplotlib's own widgets do not respond: one FloatSlider per capsule dimension, an image
    chooser and a Reset button, all driving the viewer's own sliders and methods; the figure is
    redrawn as a PNG below them. `display(panel.widget)` shows it; needs ipywidgets.
    """

    def __init__(self, viewer):
        import ipywidgets as W
        import matplotlib.pyplot as plt
        self.viewer = viewer
        self._muted = False
        plt.close(viewer.figure)  # shown below the controls only, not again by %matplotlib inline
        first = viewer.sliders[0]
        self.dims = [W.FloatSlider(value=0., min=first.valmin, max=first.valmax,
                                   step=first.valstep, description='dim %d' % d,
                                   continuous_update=False, readout_format='.2f')
                     for d in range(viewer.dim)]
        for d, slider in enumerate(self.dims):
            slider.observe(lambda change, d=d: self._moved(d, change['new']), names='value')
        self.image = W.IntSlider(value=viewer.index, min=0, max=len(viewer.images) - 1,
                                 description='image', continuous_update=False)
        self.image.observe(lambda change: self._chosen(change['new']), names='value')
        self.reset_button = W.Button(description='Reset')
        self.reset_button.on_click(lambda _button: self.reset())
        self.output = W.Output()
        half = (len(self.dims) + 1) // 2
        self.widget = W.VBox([W.HBox([self.image, self.reset_button]),
                              W.HBox([W.VBox(self.dims[:half]), W.VBox(self.dims[half:])]),
                              self.output])
        self.redraw()

    def redraw(self):
        """The viewer's figure, as it is now, into the output area."""
        import io
        from IPython.display import Image, display
        buffer = io.BytesIO()
        self.viewer.figure.savefig(buffer, format='png')
        with self.output:
            self.output.clear_output(wait=True)
            display(Image(data=buffer.getvalue()))

    def _moved(self, d, value):
        if self._muted:
            return
        with self.viewer.deferred_draws():  # redraw() below draws it once
            self.viewer.sliders[d].set_val(value)  # the viewer recomputes the reconstruction
        self.redraw()

    def _chosen(self, index):
        self.viewer.select(int(index))
        self._zero_dims()
        self.redraw()

    def _zero_dims(self):
        self._muted = True  # one redraw, not one per slider
        try:
            for slider in self.dims:
                slider.value = 0.
        finally:
            self._muted = False

    def reset(self):
        """All dimensions back to 0 (the viewer's Reset), then one redraw."""
        self._zero_dims()
        self.viewer.reset()
        self.redraw()


def build_viewer(weights, model='capsnet', index=0, data_dir=None, test_samples=100,
                 **options):
    """PerturbationViewer on the first test_samples MNIST test images for a trained model.

    weights: .h5 from capsulenet.py; model: a capsulenet.MODELS name; options: the model's
    size (e.g. conv1_filters=64, as capsulenet.build_models takes) so the architecture matches.
    """
    x_test = load_mnist(data_dir, train_samples=0, test_samples=test_samples)[1][0]
    train_model, eval_model, manipulate_model = capsulenet.build_models(
        model, x_test.shape[1:], 10, **options)
    load_weights_h5(train_model, weights)
    return PerturbationViewer(eval_model, manipulate_model, x_test, index=index)


def build_parser():
    perturb = OneLineParser(
        prog='viewer.py', description='interactive capsule-dimension perturbation viewer '
        '(matplotlib); further capsulenet.py architecture flags are passed through')
    perturb.add_argument('-w', '--weights', required=True, help='trained weights .h5')
    perturb.add_argument('--model', default='capsnet', choices=['capsnet', 'efficient'],
                         help='architecture the weights belong to')
    perturb.add_argument('--index', default=0, type=capsulenet._bounded(int, 0),
                         help='first test image shown')
    perturb.add_argument('--test_samples', default=100, type=capsulenet._bounded(int, 1),
                         help='how many MNIST test images the chooser offers')
    perturb.add_argument('--data_dir', default=None, help='folder with the MNIST idx files')
    perturb.add_argument('--out', default=None,
                         help='save the figure to this PNG instead of opening a window')
    return perturb


def _raise_user_error(message):
    raise UserError(message)


def model_options(model, model_args):
    """The capsulenet.py flags in model_args (e.g. ['--conv1_filters', '64']) as keyword
    arguments of capsulenet.build_models, checked as that command line checks them; UserError
    for a bad value and for a flag that does not size `model` (e.g. --epochs, --dataset),
    which would otherwise be ignored without a word."""
    parser = capsulenet.build_parser()
    parser.error = _raise_user_error  # a UserError for the caller, not the parser's exit
    given = vars(parser.parse_args(['--model', model] + list(model_args)))
    default = vars(parser.parse_args(['--model', model]))
    sizes = capsulenet.MODELS[model].flags
    ignored = sorted(k for k, v in given.items() if v != default[k] and k not in sizes)
    if ignored:
        takes = ['--' + k for k in sizes if k != 'lam_recon']  # lam_recon: accepted, unused
        raise UserError('--%s does not size --model %s (it takes %s)'
                        % (ignored[0], model, ', '.join(takes) or 'no such flags'))
    return {k: given[k] for k in sizes if given[k] is not None and k != 'lam_recon'}


def can_show():
    """Whether plt.show() opens a window here: not on a non-interactive matplotlib backend,
    which is what it falls back to without a display (SSH, WSL, a server) or MPLBACKEND=Agg
    gives; there it would return at once having shown nothing."""
    import matplotlib.pyplot as plt
    figure = plt.figure()
    try:  # None on Agg, pdf, svg, ...; 'tk', 'qt', ... on the window backends
        return getattr(figure.canvas, 'required_interactive_framework', None) is not None
    finally:
        plt.close(figure)


def main(argv=None):
    """`python viewer.py ...`: an `error:` line and exit code 2 on bad input (safeio.run_cli)."""
    args, model_args = build_parser().parse_known_args(argv)
    return run_cli(lambda: perturb_command(args, model_options(args.model, model_args)))


def perturb_command(args, options):
    if not 0 <= args.index < args.test_samples:
        raise UserError('--index %d must be in 0..%d (--test_samples %d)'
                        % (args.index, args.test_samples - 1, args.test_samples))
    import matplotlib
    if args.out:
        matplotlib.use('Agg')
    elif not can_show():  # before the seconds of loading the model and the data
        raise UserError('no display to open the viewer window on (matplotlib backend %s); '
                        'save the figure instead with --out viewer.png'
                        % matplotlib.get_backend())
    viewer = build_viewer(args.weights, args.model, args.index, args.data_dir,
                          args.test_samples, **options)
    import matplotlib.pyplot as plt
    if args.out:
        save_figure(viewer.figure, args.out)
        print('wrote %s' % args.out)
    else:
        plt.show()
    return 0


if __name__ == '__main__':
    sys.exit(main())
