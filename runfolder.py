"""The files of a run's --save_dir, by name: RunFolder(save_dir) owns them.

A training run writes there model.json (what the weights are: modelcard.py), log.csv (Keras'
CSVLogger), weights-XX.h5 and optimizer-XX.npz after each epoch (the checkpoints: the newest
--keep_checkpoints pairs), best_model.h5, trained_model.h5, validation_split.json
(--validation_split), test_results.json, log.png, and
evaluation.py's figures and affnist_results.json. RunFolder names each of them, lists the
checkpoints, tells whether an earlier run is there (RUN_FILES), and removes what a killed writer
left (safeio's temp files). What the files hold is the business of training.py, evaluation.py
and h5weights.py.
"""
import os
import re

from safeio import UserError, remove_stale_temps

# the files a training run leaves in its --save_dir (log.png and the figures aside)
RUN_FILES = re.compile(r'^(log\.csv|trained_model\.h5|best_model\.h5|weights-\d+\.h5|'
                       r'optimizer-\d+\.npz|validation_split\.json|test_results\.json|'
                       r'model\.json)$')
# the other files a run writes there: log.png, and evaluation.py's figures and results
REPORT_FILES = re.compile(r'^([^/]+\.png|affnist_results\.json)$')
CHECKPOINT = re.compile(r'^weights-(\d+)\.h5$')  # weights-XX.h5, XX the epochs done


class RunFolder(object):
    """The --save_dir at `path` and the names of its files (paths joined to it)."""

    LOG, LOG_FIGURE = 'log.csv', 'log.png'
    BEST, TRAINED = 'best_model.h5', 'trained_model.h5'
    SPLIT, TEST_RESULTS = 'validation_split.json', 'test_results.json'
    MODEL = 'model.json'  # modelcard.FILE
    TENSORBOARD = 'tensorboard-logs'  # --debug's TensorBoard logs (a folder)

    def __init__(self, path):
        self.path = path
        # their paths: folder.log is path/log.csv, and so on
        (self.log, self.log_figure, self.best, self.trained, self.split, self.test_results,
         self.model) = (self.file(name) for name in (self.LOG, self.LOG_FIGURE, self.BEST,
                                                     self.TRAINED, self.SPLIT,
                                                     self.TEST_RESULTS, self.MODEL))

    def file(self, name):
        return os.path.join(self.path, name)

    def weights(self, epoch):
        """The checkpoint's weights after `epoch` epochs: weights-XX.h5."""
        return self.file('weights-%02d.h5' % epoch)

    def optimizer(self, epoch):
        """The optimizer state saved with weights(epoch): optimizer-XX.npz."""
        return self.file('optimizer-%02d.npz' % epoch)

    def names(self):
        """The names in the folder ([] when there is none yet)."""
        return os.listdir(self.path) if os.path.isdir(self.path) else []

    def prepare(self):
        """Creates the folder; UserError when it cannot be, or cannot be written; removes the
        temp files of writers killed mid-write (a note for each)."""
        path = self.path
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise UserError('cannot create --save_dir %s: %s' % (path, e.strerror or e))
        if not os.access(path, os.W_OK):
            raise UserError('--save_dir %s is not writable' % path)
        for name in remove_stale_temps(path):
            print('note: removed %s, left by a process that died while writing it' % name)

    # ------------------------------------------------------------ checkpoints
    def checkpoints(self):
        """[(epoch, path)] of the weights-XX.h5 files, newest first."""
        found = []
        for name in self.names():
            match = CHECKPOINT.match(name)
            if match:
                found.append((int(match.group(1)), self.file(name)))
        return sorted(found, reverse=True)

    def latest_checkpoint(self):
        """(epoch, path) of the newest weights-XX.h5, or None."""
        found = self.checkpoints()
        return found[0] if found else None

    def prune_checkpoints(self, newest, keep):
        """Removes the weights-XX.h5 / optimizer-XX.npz pairs of epochs <= newest except the
        `keep` newest of them. Files of later epochs (a run resumed from an older checkpoint)
        are left alone: they are overwritten as training reaches them."""
        done = [epoch for epoch, _ in self.checkpoints() if epoch <= newest]
        for epoch in done[keep:]:
            for path in (self.weights(epoch), self.optimizer(epoch)):
                if os.path.exists(path):
                    os.remove(path)

    # ------------------------------------------------------------ an earlier run
    def refuse_links(self, testing=False):
        """UserError when a file this run may write here (REPORT_FILES; training: RUN_FILES
        too) is a symbolic link: CSVLogger writes log.csv in place, so a link would make the run
        truncate and rewrite a file outside --save_dir. Refused, not replaced: whoever made the
        link meant something by it; nothing is written through one."""
        for name in sorted(self.names()):
            path = self.file(name)
            ours = REPORT_FILES.match(name) or (not testing and RUN_FILES.match(name))
            if ours and os.path.islink(path):
                raise UserError('%s is a symbolic link (to %s): a run writes its files in '
                                '--save_dir itself, never through a link; replace the link by a '
                                'copy of its target, or choose another --save_dir'
                                % (path, os.readlink(path)))

    def earlier_run(self):
        """Sorted names of the files of an earlier training run here (RUN_FILES; a log.csv
        that is empty or holds its header only does not count)."""
        found = sorted(n for n in self.names() if RUN_FILES.match(n))
        if self.LOG in found and os.path.isfile(self.log) and _log_is_empty(self.log):
            found.remove(self.LOG)
        if set(found) <= {self.SPLIT, self.MODEL}:  # written as a run starts: alone, they are
            found = []                                # a run stopped at once
        return found

    def remove_earlier_run(self):
        """--overwrite: removes the earlier run's files (RUN_FILES), so that no old checkpoint
        of a later epoch is mistaken for this run's by a later --resume. Called only once the
        data and the model are ready, so that bad input leaves the earlier run whole."""
        for name in self.earlier_run():
            os.remove(self.file(name))


def _log_is_empty(log_path):
    """Whether log.csv holds nothing but maybe CSVLogger's header (`epoch,...`): what a run
    stopped in its first epoch leaves, no earlier run. Anything else, even a damaged row or
    binary data, is one."""
    with open(log_path, 'rb') as f:
        lines = [line for line in f.read(1 << 16).splitlines() if line.strip()]
    return not lines or (len(lines) == 1 and re.match(br'^epoch(,|$)', lines[0]) is not None)
