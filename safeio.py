"""User-facing errors and crash-safe file writes; no Keras, so every module may import it.

UserError: a problem with the user's input (file, flag, data), printed by the command lines as
one `error:` line, never a traceback. atomic_write: write a temp file, rename it over the target.
"""
import contextlib
import os


class UserError(Exception):
    """A problem with the user's input (file, flag, data): printed as one line, no traceback."""


def atomic_path(path):
    """Temporary name beside path (same extension); os.replace(tmp, path) swaps it in atomically."""
    directory, base = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(base)
    return os.path.join(directory, '.%s.tmp-%d%s' % (stem, os.getpid(), ext))


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
