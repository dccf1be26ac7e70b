"""Training: callbacks, checkpoints and --resume, and `train()` itself.

train() takes a compiled model and ready batches (batches.py) and runs the epochs with the
callbacks this repo relies on: LR schedule, NaN stop, CSV log, weights-XX.h5 /
optimizer-XX.npz checkpoints (the newest --keep_checkpoints pairs), best_model.h5,
trained_model.h5 and log.png at the end. Batches depend on (seed, epoch, index) only, so
runs are reproducible with any --workers and a resumed run reads the same batches.
The names of --save_dir's files, its checkpoints and an earlier run there: runfolder.RunFolder.
"""
import atexit
import csv
import json
import os
import shutil
import tempfile
import time
import zipfile

import numpy as np

import compat as C
import utils
from batches import BatchesEpoch
from compat import callbacks
from h5weights import save_weights_h5, load_weights_h5
from runfolder import RunFolder
from safeio import UserError, atomic_write


# ---------------------------------------------------------------- callbacks
def early_stopping_callbacks(monitor, patience=None, target=None):
    """EarlyStopping (--early_stopping PATIENCE) and StopAtAccuracy (--stop_at_val_acc) on the
    log column `monitor` (the validation accuracy: expanded MNIST for --dataset affnist)."""
    cbs = []
    if patience is not None:
        cbs.append(callbacks.EarlyStopping(monitor=monitor, mode='max', patience=patience,
                                           verbose=1))
    if target is not None:
        cbs.append(StopAtAccuracy(monitor, target))
    return cbs


class WeightsCheckpoint(callbacks.Callback):
    """Writes optimizer-{epoch:02d}.npz (optimizer state) then weights-{epoch:02d}.h5 (legacy
    Keras HDF5 layout) after each epoch, both atomically. Writes nothing for an epoch that
    `nan_guard` saw go NaN, so the last checkpoint on disk is always a good one.

    keep: how many of the newest pairs stay (0: all); older pairs are removed only after the
    new pair is on disk whole, so a crash at any moment leaves at least `keep` good pairs.
    """

    def __init__(self, folder, nan_guard=None, template=None, keep=0):
        super(WeightsCheckpoint, self).__init__()
        self.folder = folder  # a RunFolder
        self.nan_guard = nan_guard
        self.template = template  # the single-device model behind a multi_gpu_model
        self.keep = keep

    def on_epoch_end(self, epoch, logs=None):
        if self.nan_guard is not None and self.nan_guard.where is not None:
            return
        state = C.get_optimizer_state(self.model)
        if state is not None:
            save_arrays_npz(state, self.folder.optimizer(epoch + 1))
        save_weights_h5(self.template or self.model, self.folder.weights(epoch + 1))
        if self.keep > 0:
            self.folder.prune_checkpoints(epoch + 1, self.keep)


class BestWeights(callbacks.Callback):
    """Writes best_model.h5 (atomically) at the end of each epoch whose logs[monitor] beats
    every earlier epoch's, as Keras' ModelCheckpoint(save_best_only=True) does, in this repo's
    weights format. best: the best value of the epochs before this run (--resume)."""

    def __init__(self, path, monitor, best=None, template=None, nan_guard=None):
        super(BestWeights, self).__init__()
        self.path, self.monitor, self.best = path, monitor, best
        self.template = template
        self.nan_guard = nan_guard

    def on_epoch_end(self, epoch, logs=None):
        if self.nan_guard is not None and self.nan_guard.where is not None:
            return  # weights of a NaN epoch are never anybody's best
        value = (logs or {}).get(self.monitor)
        if value is None or not np.isfinite(value):
            return
        if self.best is None or value > self.best:
            self.best = float(value)
            save_weights_h5(self.template or self.model, self.path)


class AppendingLog(callbacks.CSVLogger):
    """CSVLogger appending to log.csv (--resume) that refuses, before writing, a row whose
    columns differ from the log's header `header` ([names]): rows would land under other
    columns. check_resumable catches most such logs before training; this catches the rest
    (e.g. an extra column) at the first epoch's end, before its checkpoint is written."""

    def __init__(self, filename, header):
        super(AppendingLog, self).__init__(filename, append=True)
        self.header = header

    def on_epoch_end(self, epoch, logs=None):
        columns = ['epoch'] + sorted(logs or {})
        # an epoch stopped early (NaNGuard) has no val_ columns on keras 2.2.4: not a foreign
        # log; the NaN's own error line follows
        stopped = getattr(self.model, 'stop_training', False)
        if self.header and columns != self.header and not stopped:
            raise UserError('%s has the columns %s, this run logs %s: nothing appended; move it '
                            'away to resume without it' % (self.filename, ','.join(self.header),
                                                           ','.join(columns)))
        self.header = None  # checked once: Keras writes every row with the first row's keys
        super(AppendingLog, self).on_epoch_end(epoch, logs)


class NaNGuard(callbacks.TerminateOnNaN):
    """Keras TerminateOnNaN (stops training on a NaN/Inf loss) that also records where:
    `where` = (epoch, batch) of the first bad batch, None while the loss is finite."""

    def __init__(self):
        super(NaNGuard, self).__init__()
        self.where = None
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_batch_end(self, batch, logs=None):
        super(NaNGuard, self).on_batch_end(batch, logs)
        loss = (logs or {}).get('loss')
        if self.where is None and loss is not None and not np.all(np.isfinite(loss)):
            self.where = (self.epoch, batch)
            self.model.stop_training = True


class EpochStats(callbacks.Callback):
    """Adds `lr` and `epoch_time` (seconds) to each epoch's logs, so CSVLogger records them
    under the same names on every Keras (Keras 3's scheduler calls it `learning_rate`)."""

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.pop('learning_rate', None)
            logs['epoch_time'] = round(time.time() - self.start, 2)
            logs['lr'] = C.get_learning_rate(self.model)


class StopAtAccuracy(callbacks.Callback):
    """Stops training at the end of the first epoch whose logs[monitor] >= target."""

    def __init__(self, monitor, target):
        super(StopAtAccuracy, self).__init__()
        self.monitor, self.target = monitor, target

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and value >= self.target:
            print('%s %.4f >= %.4f: stopping' % (self.monitor, value, self.target))
            self.model.stop_training = True


# ---------------------------------------------------------------- checkpoints and --resume
def worker_save_dir(save_dir, task, resume):
    """The folder this process writes: save_dir, unless it is a non-chief worker of a
    multi-worker run (task: runsetup.WorkerTask, None when alone). Such a worker writes to a
    temporary folder, removed at exit, so that only the chief writes --save_dir (several
    writers would tear its files; TensorFlow's advice); with resume the folder starts as a
    copy of --save_dir's files, so every worker resumes from the same checkpoint."""
    if task is None or task.chief:
        return save_dir
    temp = tempfile.mkdtemp(prefix='capsnet-%s%d-' % (task.type, task.index))
    atexit.register(shutil.rmtree, temp, True)
    if resume and os.path.isdir(save_dir):
        for name in os.listdir(save_dir):
            if os.path.isfile(os.path.join(save_dir, name)):
                shutil.copy2(os.path.join(save_dir, name), temp)
    print('note: multi-worker run: %s %d writes to the temporary %s; the chief writes '
          '--save_dir' % (task.type, task.index, temp))
    return temp


def _shown(names):
    return ', '.join(names[:3]) + (', ...' if len(names) > 3 else '')


def refuse_earlier_run(folder, overwrite=False):
    """A fresh run must not destroy an earlier run's log.csv and checkpoints (CSVLogger would
    truncate the log at once, beside the old weights): UserError unless overwrite."""
    found = folder.earlier_run()
    if found and not overwrite:
        raise UserError('--save_dir %s holds an earlier run (%s): continue it with --resume, '
                        'replace it with --overwrite, or choose another --save_dir'
                        % (folder.path, _shown(found)))


def check_resumable(folder, monitor):
    """--resume, before the data are loaded: UserError when `folder` (a RunFolder) holds an
    earlier run but no checkpoint to continue it from (a fresh run would replace it), or a
    log.csv that lacks the columns of this run (`monitor`: its validation accuracy column). An
    empty folder, or one with an empty log.csv only, is fine: training starts at epoch 1."""
    if not folder.checkpoints():
        found = folder.earlier_run()
        if found:
            raise UserError('--resume: --save_dir %s holds an earlier run (%s) but no checkpoint '
                            '(weights-XX.h5) to continue it from: start afresh with --overwrite '
                            'instead of --resume, or choose another --save_dir'
                            % (folder.path, _shown(found)))
        return
    log_path = folder.log
    lines = _log_lines(log_path) if os.path.isfile(log_path) else []
    if not lines:
        return  # CSVLogger writes the header
    header = _csv_row(lines[0])
    required = {'epoch', 'loss', 'val_loss', 'lr', 'epoch_time', monitor,
                monitor[len('val_'):] if monitor.startswith('val_') else monitor}
    missing = sorted(required - set(header))
    if missing:
        raise UserError('%s lacks columns this run logs (%s; it has %s): a log of another model? '
                        'Move it away to resume without it' % (log_path, ', '.join(missing),
                                                               ','.join(header)))


def resume_weights(model, folder, epochs=None):
    """Loads the newest loadable weights-XX.h5 of the RunFolder into model; returns XX (the
    number of epochs done), 0 when there is none (a note: training starts at epoch 1). A
    damaged newest file is reported and skipped once (the one before it is tried); when no
    checkpoint tried loads, UserError naming each and why (another architecture: the model
    flags differ from the run's): --resume never starts afresh over an earlier run. A newest
    file past `epochs` (the run's --epochs) is an error naming it: resuming would train nothing."""
    found = folder.checkpoints()
    if found and epochs is not None and found[0][0] > epochs:
        raise UserError('%s says the run is already past --epochs %d (%d epochs done): raise '
                        '--epochs, or remove that file if it is stray' % (found[0][1], epochs,
                                                                          found[0][0]))
    failed = []
    for epoch, path in found[:2]:
        try:
            load_weights_h5(model, path)
        except UserError as e:
            failed.append(str(e))
            if len(found) > 1 and len(failed) == 1:
                print('note: skipping %s: %s' % (path, e))
            continue
        print('Resuming after epoch %d from %s' % (epoch, path))
        return epoch
    if failed:
        raise UserError('--resume: no checkpoint in %s loads (%s): give the flags of the run it '
                        'continues (--model, architecture), or start afresh with --overwrite '
                        'instead of --resume' % (folder.path, '; '.join(failed)))
    print('note: no checkpoint (weights-XX.h5) in %s: training from epoch 1' % folder.path)
    return 0


def _recorded_split(folder):
    """The --validation_split recorded in the RunFolder (None: no record, an older run's)."""
    path = folder.split
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return int(json.load(f)['validation_split'])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError('%s is unreadable (%s): move it away if the run it belongs to '
                        'validated on the test set' % (path, e))


def check_validation_split(folder, n):
    """--resume must validate as the run it continues did: its log's val_ columns and
    best_model.h5 compare epochs on one set. UserError when the recorded split differs
    (a folder without a record: a run that validated on the test set, 0). A folder without a
    checkpoint has nothing to continue: training starts at epoch 1 with this split (and
    record_validation_split replaces any record of a run stopped before its first epoch)."""
    if not folder.checkpoints():
        return
    recorded = _recorded_split(folder)
    recorded = 0 if recorded is None else recorded
    if recorded != n:
        raise UserError('--validation_split %d, but the run in %s was started with %d: resume '
                        'it with --validation_split %d' % (n, folder.path, recorded, recorded))


def record_validation_split(folder, n, train_images):
    """Writes the RunFolder's validation_split.json (atomically): the split --resume checks. Nothing
    for n = 0, the default (a stale file of a run stopped before its first epoch is removed): a
    folder without the file validated on the test set."""
    path = folder.split
    if not n:
        if os.path.isfile(path) and not os.path.islink(path):
            os.remove(path)
        return
    with atomic_write(path) as tmp:
        with open(tmp, 'w') as f:
            json.dump({'validation_split': int(n), 'train_images': int(train_images)}, f)
            f.write('\n')


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run on save_dir, knowing what to tell: continue with --resume when a
    checkpoint is there, else that nothing was saved (a note: no error of the user's)."""

    def __init__(self, save_dir, testing=False):
        super(Interrupted, self).__init__()
        self.save_dir, self.testing = save_dir, testing

    def advice(self):
        if self.testing:
            return 'error: interrupted'
        if RunFolder(self.save_dir).checkpoints():
            return 'error: interrupted; continue with --resume (same --save_dir)'
        return ('note: interrupted before the first checkpoint (weights-01.h5): nothing was '
                'saved; run the same command again to start afresh')


def restore_optimizer(model, path):
    """Loads the optimizer state saved beside a checkpoint; a note (not an error) when it is
    missing or does not fit, training then goes on with a fresh optimizer."""
    if not os.path.isfile(path):
        print('note: %s not found: optimizer state (Adam moments) starts fresh' % path)
        return
    try:
        C.set_optimizer_state(model, load_arrays_npz(path))
    except (UserError, OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        print('note: optimizer state not restored from %s (%s): it starts fresh' % (path, e))
        return
    print('Restored optimizer state from %s' % path)


def _log_lines(log_path):
    """log.csv's lines (line ends kept); UserError when it is not UTF-8 text (binary garbage,
    a UTF-16 file, NUL bytes): what it holds cannot be told apart from a damaged log."""
    with open(log_path, 'rb') as f:
        data = f.read()
    try:
        text = data.decode('utf-8')
    except UnicodeDecodeError as e:
        text, bad = None, e.start
    else:
        bad = text.find('\0')
    if text is None or bad >= 0:
        raise UserError('%s is not a text CSV log (binary data at byte %d): cannot resume its '
                        'log; move it away to resume without it' % (log_path, bad))
    return text.splitlines(True)


def _csv_row(line):
    try:
        return next(csv.reader([line]), [])
    except csv.Error:
        return []


def trim_log(log_path, initial_epoch):
    """Keeps log.csv's header and, of the epochs < initial_epoch, one row each in epoch order
    (rewritten atomically), so that appending the resumed epochs gives each epoch exactly
    once, in order. An epoch logged twice (an earlier resume from an older checkpoint)
    keeps its last row: the one of the run that wrote the checkpoint resumed from. Returns
    the header's column names, None when there is no log (or an empty one)."""
    if not os.path.isfile(log_path):
        return None
    lines = _log_lines(log_path)
    if not lines:
        return None
    header = _csv_row(lines[0])
    if 'epoch' not in header:
        raise UserError('%s has no epoch column: cannot resume its log' % log_path)
    column = header.index('epoch')
    rows = {}
    for line in lines[1:]:
        row = _csv_row(line)
        try:
            epoch = int(float(row[column]))
        except (IndexError, ValueError, OverflowError):
            continue  # a half-written last row from a crash
        if 0 <= epoch < initial_epoch:
            rows[epoch] = line if line.endswith('\n') else line + '\n'
    kept = [lines[0]] + [rows[epoch] for epoch in sorted(rows)]
    if len(rows) != initial_epoch or len(lines) - 1 != len(rows):
        print('note: %s: kept one row each of the %d of %d epochs done it logs (%d rows)'
              % (log_path, len(rows), initial_epoch, len(lines) - 1))
    with atomic_write(log_path) as tmp:
        with open(tmp, 'w') as f:
            f.writelines(kept)
    return header


def logged_best(log_path, column):
    """The largest finite value of `column` in log.csv (the epochs already done), or None."""
    if not os.path.isfile(log_path):
        return None
    values = []
    with open(log_path, errors='replace') as f:
        for row in csv.DictReader(f):
            try:
                values.append(float(row.get(column)))
            except (TypeError, ValueError):
                continue
    values = [v for v in values if np.isfinite(v)]
    return max(values) if values else None


def save_arrays_npz(arrays, path):
    """Writes a list of arrays to an .npz file atomically (temp file + rename)."""
    with atomic_write(path) as tmp:
        with open(tmp, 'wb') as f:
            np.savez(f, *arrays)


def load_arrays_npz(path):
    """The arrays of an .npz written by save_arrays_npz, in order (no pickle)."""
    with np.load(path, allow_pickle=False) as data:
        return [data['arr_%d' % i] for i in range(len(data.files))]


# ---------------------------------------------------------------- train
def scheduled_lr(epoch, lr, lr_decay, lr_min=0.):
    """Learning rate of epoch (from 0): max(lr_min, lr * lr_decay^epoch)."""
    return max(lr_min or 0., lr * (lr_decay ** epoch))


def train(model, batches, validation_data, folder, epochs, schedule, monitor,
          initial_epoch=0, template=None, keep_checkpoints=2, extra_callbacks=()):
    """Fits the compiled `model` on `batches` (a Sequence with `workers_wanted`); writes to
    the RunFolder `folder`: log.csv, checkpoints, best_model.h5, then trained_model.h5 and log.png.

    schedule(epoch) -> learning rate; monitor: the log column of the validation accuracy
    (best_model.h5 follows it). initial_epoch > 0 (--resume, weights already loaded): the
    optimizer state saved with that checkpoint is restored where present, the schedule
    continues at that epoch and log.csv (trimmed to the epochs before it) is appended to.
    template: the single-device model whose weights are saved (default: model itself; they
    differ under keras 2.2.4's multi_gpu_model). Raises UserError when the loss goes NaN.
    """
    template = template or model
    log_path = folder.log
    log = callbacks.CSVLogger(log_path)
    if initial_epoch > 0:
        restore_optimizer(model, folder.optimizer(initial_epoch))
        log = AppendingLog(log_path, trim_log(log_path, initial_epoch))
    nan_guard = NaNGuard()
    best_path = folder.best
    best = logged_best(log_path, monitor) if initial_epoch > 0 and os.path.isfile(best_path) else None
    cbs = [callbacks.LearningRateScheduler(schedule),
           EpochStats(),
           nan_guard,
           log,
           WeightsCheckpoint(folder, nan_guard, template, keep=keep_checkpoints),
           BestWeights(best_path, monitor, best, template, nan_guard)] + list(extra_callbacks)
    if C.KERAS3:  # keras 2.2.4's enqueuer calls on_epoch_end itself (batches.Batches)
        cbs.append(BatchesEpoch(batches))
    # a resumed run reads the batches the uninterrupted run would: they depend on (seed,
    # epoch, index) only, so restoring the epoch restores the data order and the shifts
    batches.set_epoch(initial_epoch)
    # validation at the training batch size, as keras 2.2.4 does (Keras 3 takes 32 a step
    # unless told: 3x the steps; its figures are per-image means either way, docs/speed.md)
    C.fit(model, batches, epochs=epochs, callbacks_list=cbs, initial_epoch=initial_epoch,
          validation_data=validation_data, workers=batches.workers_wanted,
          validation_batch_size=batches.batch_size)
    if nan_guard.where is not None:
        epoch, batch = nan_guard.where
        last = folder.latest_checkpoint()
        raise UserError('loss became NaN/Inf in epoch %d (batch %d); training stopped, '
                        'trained_model.h5 not written; last good checkpoint: %s'
                        % (epoch + 1, batch, os.path.basename(last[1]) if last else 'none'))
    weights_path = folder.trained
    save_weights_h5(template, weights_path)
    print('Trained model saved to %s' % weights_path)
    utils.plot_log(log_path, folder.log_figure)
