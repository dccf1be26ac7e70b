"""The command line is quiet by default: no TensorFlow C++ log lines ("oneDNN custom operations
are on...", "All log messages before absl::InitializeLog()...", I0000/E0000 lines) between our
output and Keras' progress bar; a TF_CPP_MIN_LOG_LEVEL the user sets still wins."""
import os
import re
import subprocess
import sys

from conftest import ROOT
from helpers import TINY_FLAGS

CHATTER = ('oneDNN custom operations', 'absl::InitializeLog', 'node_def_util')
LOG_LINE = re.compile(r'^[IWEF]\d{4} ', re.M)  # absl's prefix: I0000 00:00:... file.cc:NN]


def python(*args, log_level=None):
    """`python args...` in the repo root, TF_CPP_MIN_LOG_LEVEL unset (helpers.run_python sets
    it; conftest and .ci/run export it) or log_level -> CompletedProcess."""
    env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
    if log_level is not None:
        env['TF_CPP_MIN_LOG_LEVEL'] = log_level
    return subprocess.run([sys.executable] + [str(a) for a in args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=600)


def test_cli_training_with_seed_prints_no_tensorflow_log_lines(tmp_path):
    # --seed turns on op determinism, under which TF 2.21's tf.data logs an ERROR line
    proc = python('capsulenet.py', '--epochs', '1', '--train_samples', '20',
                  '--test_samples', '20', '--batch_size', '10', '--seed', '0',
                  '--save_dir', tmp_path, *TINY_FLAGS)
    assert proc.returncode == 0, proc.stderr
    assert 'Test accuracy' in proc.stdout
    for text in CHATTER:
        assert text not in proc.stderr, proc.stderr
    assert not LOG_LINE.search(proc.stderr), proc.stderr


def test_user_log_level_wins():
    proc = python('-c', 'import os, compat; print(os.environ["TF_CPP_MIN_LOG_LEVEL"])',
                  log_level='1')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ['1']
