"""Which Keras backend this process asks for, and one line saying why it cannot load; no Keras.

compat.py imports Keras once for every command line, through import_keras (which also keeps
TensorFlow's start-up chatter off stderr); when that import fails (KERAS_BACKEND
names no backend, or the backend's package is not installed) import_failure(error) is the
message of the UserError it raises instead of Keras' traceback. A parent process that starts
one worker per backend (benchmarks/bench.py) checks each name with missing() first, without
importing Keras or the backend.
"""
import contextlib
import importlib.util
import json
import os
import re
import sys
import tempfile

from safeio import UserError

# the backends this repo runs on (keras 2.2.4: tensorflow only), and how to install each
INSTALL = {'tensorflow': 'pip install tensorflow',
           'jax': 'pip install "jax[cpu]" (GPU: "jax[cuda12]")',
           'torch': 'pip install torch'}
SUPPORTED = 'tensorflow, jax or torch'


def requested():
    """(backend name, where it was chosen): KERAS_BACKEND, else keras.json (KERAS_HOME or
    ~/.keras, the file Keras itself reads), else Keras' default, tensorflow."""
    name = os.environ.get('KERAS_BACKEND', '').strip()
    if name:
        return name, 'KERAS_BACKEND=%s' % name
    home = os.environ.get('KERAS_HOME') or os.path.join(os.path.expanduser('~'), '.keras')
    config = os.path.join(home, 'keras.json')
    try:
        with open(config) as f:
            name = str(json.load(f).get('backend', '')).strip()
    except (OSError, ValueError, AttributeError):  # missing or unreadable: Keras' default
        name = ''
    if name:
        return name, 'backend %s (set in %s)' % (name, config)
    return 'tensorflow', 'backend tensorflow'


def _advice(name, choose='set KERAS_BACKEND to'):
    """What to do about backend `name`: install its package, or choose another."""
    if name in INSTALL:
        return 'install it with %s, or %s another of %s' % (INSTALL[name], choose, SUPPORTED)
    return '%s %s (keras 2.2.4: tensorflow only)' % (choose, SUPPORTED)


def import_failure(error):
    """One line for an exception from `import keras` (ImportError, ValueError, OSError):
    Keras missing, a backend that is no backend, or a backend's package missing or broken."""
    name, where = requested()
    if isinstance(error, ImportError) and (error.name or '').split('.')[0] == 'keras':
        return 'Keras is not installed (%s): pip install -r requirements.txt' % error
    if name not in INSTALL:
        return '%s is not a Keras backend this repo runs on: %s' % (where, _advice(name))
    if isinstance(error, ValueError) and name != 'tensorflow':
        # keras 2.2.4 knows tensorflow, theano and cntk only
        return '%s: this Keras cannot load it (%s); keras 2.2.4 runs on tensorflow only' \
            % (where, error)
    return '%s: cannot import %s (%s): %s' % (where, name, error, _advice(name))


def missing(name, choose='use'):
    """None when backend `name` is one this repo runs on and its package is installed, else
    the one line saying what to do (choose: the verb before the other backends' names). Only
    looks the package up: nothing is imported."""
    if name not in INSTALL:
        return 'backend %s is not a Keras backend this repo runs on: %s' % (
            name, _advice(name, choose))
    if not installed(name):
        return 'backend %s: %s is not installed: %s' % (name, name, _advice(name, choose))
    return None


def installed(package):
    """Whether top-level `package` can be imported, found without importing it (one set to
    None in sys.modules, as tests hide a package, is not)."""
    try:
        return importlib.util.find_spec(package) is not None
    except ValueError:  # imported already, without a __spec__
        return True


# TensorFlow's C++ log lines, before TensorFlow is imported (a user's own value wins). 3, not
# 2: with --seed (op determinism) TF 2.21's tf.data logs a harmless ERROR line, NodeDef
# `use_unbounded_threadpool`, preceded by absl's 'All log messages before absl::InitializeLog()'.
_QUIET = 'TF_CPP_MIN_LOG_LEVEL' not in os.environ
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# absl's informational lines from before its InitializeLog, written to fd 2 whatever the level
_EARLY_CHATTER = re.compile(r'^(WARNING: All log messages before absl::InitializeLog\(\)'
                            r'|[IW]\d{4} \d\d:\d\d:[\d.]+ +\d+ [\w.]+:\d+\] )')


@contextlib.contextmanager
def _without_early_chatter(quiet):
    """While TensorFlow loads (inside `import keras`), fd 2 goes to a temporary file; then its
    lines go to stderr less absl's early informational ones ('oneDNN custom operations are
    on', twice, on CPUs where oneDNN is on by default: TF_CPP_MIN_LOG_LEVEL does not reach
    them). Errors and everything else are kept; quiet=False (a level the user set): as is."""
    if not quiet:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode='w+b') as early:
        os.dup2(early.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            early.seek(0)
            lines = early.read().decode('utf-8', 'replace').splitlines(True)
            sys.stderr.write(''.join(l for l in lines if not _EARLY_CHATTER.match(l)))
            sys.stderr.flush()


def import_keras():
    """keras, or a UserError of one line (import_failure) when KERAS_BACKEND names no
    backend or its package is missing: the command lines import this module before their
    handlers exist, so safeio.interrupt_is_one_line's hook prints that line."""
    failure = None
    with _without_early_chatter(_QUIET):
        try:
            import keras
        except (ImportError, ValueError, OSError) as e:  # OSError: a backend's broken library
            failure = e
    if failure is not None:
        raise UserError(import_failure(failure)) from failure
    return keras
