"""CAPSNET_THREADS caps the backend's CPU threads; bad values are one line."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT

import compat as C


PROBE = '''
import compat as C

pytestmark = pytest.mark.stack
n = C.configure_threads()
if C.BACKEND == 'tensorflow' and C.KERAS3:
    import tensorflow as tf
    print(n, tf.config.threading.get_intra_op_parallelism_threads(),
          tf.config.threading.get_inter_op_parallelism_threads())
elif C.BACKEND == 'torch':
    import torch
    print(n, torch.get_num_threads(), 1)
elif not C.KERAS3:  # keras 2.2.4: the settings of the session Keras runs its graph in
    config = C._K.get_session()._config
    print(n, config.intra_op_parallelism_threads, config.inter_op_parallelism_threads)
else:
    print(n, n, 1)
'''


def probe(value):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    env.pop('CAPSNET_THREADS', None)
    if value is not None:
        env['CAPSNET_THREADS'] = value
    proc = subprocess.run([sys.executable, '-c', PROBE], cwd=ROOT, env=env, timeout=300,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    return proc


@pytest.mark.skipif(C.BACKEND == 'jax', reason='JAX threads are set through XLA_FLAGS')
def test_threads_from_environment():
    proc = probe('1')
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-3:] == ['1', '1', '1']


def test_unset_leaves_backend_default():
    proc = probe(None)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-3] == '0'


def test_bad_value_is_one_line(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', CAPSNET_THREADS='two')
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'capsulenet.py'), '--save_dir',
                           str(tmp_path)], cwd=ROOT, env=env, timeout=300,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith('error: CAPSNET_THREADS')
