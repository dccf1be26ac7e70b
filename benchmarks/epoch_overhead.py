"""Where a command-line training epoch's time goes, against its training steps alone.

    python benchmarks/epoch_overhead.py --mixed_precision bf16 --train_samples 10000 --epochs 2
    python benchmarks/epoch_overhead.py --train_samples 40 --test_samples 20 --batch_size 10 \\
        --epochs 2 --conv1_filters 16 --primary_channels 4          # smoke test

The arguments are capsulenet.py's (--save_dir: a temporary folder unless given). Its training
runs as the command line runs it (model, batches, validation data, callbacks, checkpoints),
with a timing callback; before it, in the same process on the same compiled model, it times
(a) one epoch's batches (built first, their augmentation timed apart; the first
ALONE_BATCHES of them, scaled to the epoch) through train_on_batch alone and (c) the
validation data through evaluate alone, at the CLI's batch size. The first epoch also
builds fit's data pipelines: the last is the one compared. Being ratios within one
process, the figures hold better than absolute times on a CPU shared with other work.

Prints one JSON line per epoch (seconds): `epoch` (epoch start to the end of the last
callback), `start_wait` (epoch start to its first batch), `steps` (the batches inside fit),
`between` (between batches), `to_validation`, `validation` (fit's own; Keras 3),
`callbacks` (after validation: log, checkpoints, best model); then one line `alone` with
`steps`, `augment` and `validation` timed alone and `overhead` (the last epoch's time over
the steps alone, minus 1) and `overhead_beyond_inference` (over steps + validation alone).
The command line's final test on the test set is skipped.
"""
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import compat as C  # noqa: E402
import capsulenet  # noqa: E402
import training  # noqa: E402


# batches timed alone: enough for a steady figure, few enough for a quiet CPU's minutes
ALONE_BATCHES = 30


class EpochTimes(C.callbacks.Callback):
    """Records when each epoch, batch and validation pass starts and ends (perf_counter)."""

    def __init__(self):
        super(EpochTimes, self).__init__()
        self.epochs = []

    def _mark(self, name):
        self.epochs[-1].append((name, time.perf_counter()))

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append([('epoch_begin', time.perf_counter())])

    def on_batch_begin(self, batch, logs=None):
        self._mark('batch_begin')

    def on_batch_end(self, batch, logs=None):
        self._mark('batch_end')

    def on_test_begin(self, logs=None):
        self._mark('test_begin')

    def on_test_end(self, logs=None):
        self._mark('test_end')

    def on_epoch_end(self, epoch, logs=None):
        self._mark('epoch_end')


def _spans(events, first, second):
    """Sum of the times from each `first` event to the event right after it, when `second`."""
    return sum(t2 - t1 for (a, t1), (b, t2) in zip(events, events[1:])
               if a == first and b == second)


def epoch_parts(events):
    """One epoch's events [(name, seconds)] -> {part: seconds} (see the module docstring)."""
    at = {}
    for name, t in events:
        at.setdefault(name, []).append(t)
    last_batch = at['batch_end'][-1]
    tests = at.get('test_begin'), at.get('test_end')
    after_batches = tests[1][0] if tests[1] else last_batch
    return dict(epoch=at['epoch_end'][0] - at['epoch_begin'][0],
                start_wait=at['batch_begin'][0] - at['epoch_begin'][0],
                steps=_spans(events, 'batch_begin', 'batch_end'),
                between=_spans(events, 'batch_end', 'batch_begin'),
                batches=len(at['batch_end']),
                to_validation=(tests[0][0] - last_batch) if tests[0] else None,
                validation=(tests[1][0] - tests[0][0]) if tests[1] else None,
                callbacks=at['epoch_end'][0] - after_batches)


def _head(data, n):
    """The first n samples of (inputs, targets), each a list of arrays or an array."""
    return [x[:n] for x in data] if isinstance(data, (list, tuple)) else data[:n]


def time_alone(model, batches, validation_data, batch_size, most=ALONE_BATCHES):
    """(a) and (c): one epoch's batches through train_on_batch (the first `most` of them,
    the time scaled to all), then evaluate on the validation data at batch_size, in seconds,
    each after an untimed call (its tracing for these shapes); and the time all the
    batches took to build (augmentation)."""
    start = time.perf_counter()
    data = [batches[i] for i in range(len(batches))]
    augment = time.perf_counter() - start
    model.train_on_batch(*data[0])
    start = time.perf_counter()
    for x, y in data[:most]:
        model.train_on_batch(x, y)
    steps = (time.perf_counter() - start) * len(data) / len(data[:most])
    x, y = validation_data
    model.evaluate(_head(x, batch_size), _head(y, batch_size), batch_size=batch_size, verbose=0)
    start = time.perf_counter()
    model.evaluate(x, y, batch_size=batch_size, verbose=0)
    return dict(steps=steps, augment=augment, validation=time.perf_counter() - start)


class _Measured(Exception):
    """Ends the command line after training: its test on the test set is not timed."""


def measure(argv, out=sys.stdout):
    """Runs capsulenet.main(argv) with the timing; prints and returns the JSON rows."""
    timer, rows = EpochTimes(), []
    train = training.train

    def timed_train(model, batches, validation_data, *args):
        *args, extra = args
        inner = getattr(batches, 'batches', batches)  # ClassifierBatches wraps the Sequence
        # first: it also traces the step and the inference, before fit's first epoch
        alone = dict(time_alone(model, batches, validation_data, inner.batch_size),
                     batch_size=inner.batch_size)
        train(model, batches, validation_data, *args, list(extra) + [timer])
        rows.extend(dict(epoch_parts(e), row='epoch %d' % (i + 1))
                    for i, e in enumerate(timer.epochs))
        last = rows[-1]['epoch']
        both = alone['steps'] + alone['validation']
        rows.append(dict(alone, row='alone', overhead=last / alone['steps'] - 1,
                         overhead_beyond_inference=last / both - 1))
        raise _Measured()

    if '--save_dir' not in argv:
        argv = list(argv) + ['--save_dir', tempfile.mkdtemp(prefix='epoch_overhead_')]
    training.train = timed_train
    try:
        code = capsulenet.main(argv)
    except _Measured:
        code = 0
    finally:
        training.train = train
    for row in rows:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v
                          for k, v in row.items()}), file=out)
    return code if rows or code else 1


if __name__ == '__main__':
    sys.exit(measure(sys.argv[1:]))
