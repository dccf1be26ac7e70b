"""User-facing errors, crash-safe file writes and checked JSON reads; no Keras, so every module may import it.

UserError: a problem with the user's input (file, flag, data), printed by the command lines as
one `error:` line, never a traceback (one_line: any message made one line). OneLineParser:
argparse whose bad flags are such a line too (every command line's parser). atomic_write: write
a temp file, rename it over the target; remove_stale_temps: clear the temp files of writers that
were killed mid-write. read_json_object: a small JSON file the user may have edited, read into a
dict or refused in one line.
run_cli: every command line's body runs in it (one `error:` line, exit codes 0 / 2 / 130);
interrupt_is_one_line: Ctrl-C or a UserError before a command line's own handler runs gives one
line too.
"""
import argparse
import contextlib
import json
import os
import re
import sys


def one_line(text):
    """text with each line break, and the blanks around it, made one space: the messages of
    HDF5 (h5py's OSError on a full disk) carry a ctime() time stamp that ends in a newline."""
    return re.sub(r'\s*[\r\n]+\s*', ' ', str(text)).strip()


class UserError(Exception):
    """A problem with the user's input (file, flag, data): printed as one line, no traceback
    (its text is one line whatever the message it was given, e.g. a library's, holds)."""

    def __str__(self):
        return one_line(super(UserError, self).__str__())


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad flags as one line (no usage dump) and exits 2; --help is
    unchanged. Its subcommands' parsers are OneLineParsers too (argparse makes them of the
    parent's class)."""

    def error(self, message):
        self.exit(2, 'error: %s\n' % one_line(message))


def atomic_path(path):
    """Temporary name beside path (same extension); os.replace(tmp, path) swaps it in atomically."""
    directory, base = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(base)
    return os.path.join(directory, '.%s.tmp-%d%s' % (stem, os.getpid(), ext))


# atomic_path's names: .<stem>.tmp-<pid><ext>
TEMP_NAME = re.compile(r'^\.(.+)\.tmp-(\d+)(\.[A-Za-z0-9]+)?$')


def _alive(pid):
    """Whether process pid may exist (signal 0 checks without signalling; POSIX only). Pid 0
    and negative pids name process groups: never probed, said alive."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # EPERM: another user's process; no such pid number
        return True
    return True


def remove_stale_temps(folder):
    """Removes the atomic_path temp files in folder whose writer process is gone (a kill -9
    mid-write leaves one, often megabytes); a live writer's are left alone. Returns their
    names. Does nothing off POSIX, where signal 0 is no harmless liveness probe."""
    if os.name != 'posix' or not os.path.isdir(folder):
        return []
    removed = []
    for name in sorted(os.listdir(folder)):
        match = TEMP_NAME.match(name)
        if match and not _alive(int(match.group(2))):
            try:
                os.remove(os.path.join(folder, name))
            except OSError:
                continue  # not ours to remove (permissions): harmless, left as it is
            removed.append(name)
    return removed


@contextlib.contextmanager
def atomic_write(path):
    """`with atomic_write(path) as tmp:` write tmp; on success it replaces path in one rename,
    so a crash or a full disk leaves the previous file whole. An OSError becomes a UserError
    naming the file, and the temp file is removed."""
    tmp = atomic_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise UserError('cannot write %s: %s' % (path, e.strerror or e))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def interrupt_is_one_line():
    """Makes an uncaught KeyboardInterrupt print one `error:` line instead of a traceback (the
    exit status stays the interrupted one, 130), and an uncaught UserError its one line (exit
    2); other exceptions are reported as usual. The command lines call it first thing: Ctrl-C
    while TensorFlow loads (seconds), or a Keras backend that cannot load (compat.py raises a
    UserError at import), would otherwise end in an import traceback, before main() and its
    handler exist."""
    def hook(kind, value, traceback):
        if not issubclass(kind, (KeyboardInterrupt, UserError)):
            sys.__excepthook__(kind, value, traceback)
            return
        interrupted = issubclass(kind, KeyboardInterrupt)
        print('error: %s' % ('interrupted' if interrupted else value), file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # leave now: a half-imported TensorFlow's threads can stall the interpreter's
        # shutdown (seen once in CI on keras 2.2.4: no exit within 120 s); main() catches its
        # own UserErrors, so one that gets here comes from start-up, before anything is written
        os._exit(130 if interrupted else 2)
    sys.excepthook = hook


def run_cli(body):
    """Runs a command line's body() (its work once the flags are parsed) -> the exit code:
    body's own (None: 0); a UserError (data_errors.DataError too) or an OSError (disk full,
    permissions, ... while writing outputs) is one `error: ...` line on stderr and 2; Ctrl-C
    (KeyboardInterrupt) is one line and 130: the exception's advice() where it has one
    (training.Interrupted: continue with --resume), else `error: interrupted`."""
    try:
        code = body()
    except UserError as e:
        print('error: %s' % e, file=sys.stderr)
        return 2
    except OSError as e:
        print('error: %s%s' % (e.strerror or e, ': %s' % e.filename if e.filename else ''),
              file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        # on a line of its own: Ctrl-C mostly lands in the middle of a progress bar
        advice = e.advice() if hasattr(e, 'advice') else 'error: interrupted'
        print('\n' + advice, file=sys.stderr)
        return 130
    return 0 if code is None else code


def read_json_object(path, what='a JSON object', max_bytes=None):
    """The JSON object (a dict) in the file at path; UserError naming path when it cannot be
    read, is not JSON, is larger than max_bytes, or holds something else than `what` says."""
    try:
        if max_bytes is not None and os.path.getsize(path) > max_bytes:
            raise UserError('%s is %d bytes: not %s' % (path, os.path.getsize(path), what))
        with open(path) as f:
            entry = json.load(f)
    except (OSError, ValueError) as e:  # ValueError: not JSON, not UTF-8
        raise UserError('cannot read %s (mend or move it): %s' % (path, e))
    if not isinstance(entry, dict):
        raise UserError('%s is not %s (mend or move it)' % (path, what))
    return entry
