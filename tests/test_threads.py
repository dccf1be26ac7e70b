"""CAPSNET_THREADS caps the backend's CPU threads; bad values are one line; a
TF_CPP_MIN_LOG_LEVEL the user set is kept (compat sets 3 only where it is unset)."""
import pytest

import compat as C
from helpers import assert_one_error_line, run_main, run_python


pytestmark = pytest.mark.stack

# in a fresh process: what compat set at import (the log level), configure_threads, then
# the settings backend_threads reads
PROBE = '''
import os, sys
sys.path.insert(0, 'tests')
import compat as C
from test_threads import backend_threads
n = C.configure_threads()
print(os.environ['TF_CPP_MIN_LOG_LEVEL'], n, *(backend_threads() or (n, 1)))
'''


def probe(value, log_level):
    """PROBE in a fresh process (threads are set before the backend starts) with
    CAPSNET_THREADS=value and TF_CPP_MIN_LOG_LEVEL=log_level (as a user may set it)."""
    return run_python('-c', PROBE, timeout=300, CAPSNET_THREADS=value,
                      TF_CPP_MIN_LOG_LEVEL=log_level)


@pytest.mark.skipif(C.BACKEND == 'jax', reason='JAX threads are set through XLA_FLAGS')
def test_threads_and_user_log_level_from_environment():
    proc = probe('1', '1')
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-4:] == ['1', '1', '1', '1']


def backend_threads():
    """This process' backend (intra-op, inter-op) thread settings; None on JAX (XLA_FLAGS)."""
    if C.BACKEND == 'tensorflow' and C.KERAS3:
        import tensorflow as tf
        return (tf.config.threading.get_intra_op_parallelism_threads(),
                tf.config.threading.get_inter_op_parallelism_threads())
    if C.BACKEND == 'torch':
        import torch
        return torch.get_num_threads(), 1
    if not C.KERAS3:  # keras 2.2.4: the settings of the session Keras runs its graph in
        config = C._K.get_session()._config
        return config.intra_op_parallelism_threads, config.inter_op_parallelism_threads
    return None


def test_unset_leaves_backend_default(monkeypatch):
    # in this process: unset changes nothing, so it needs no fresh one
    monkeypatch.delenv('CAPSNET_THREADS', raising=False)
    before = backend_threads()
    assert C.configure_threads() == 0
    assert backend_threads() == before


def test_bad_value_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('CAPSNET_THREADS', 'two')
    code, out, err = run_main(capsys, '--save_dir', str(tmp_path))
    assert_one_error_line(code, err, 'CAPSNET_THREADS')
    assert code == 2 and err.strip().startswith('error: CAPSNET_THREADS')
