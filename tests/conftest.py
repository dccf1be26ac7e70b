"""Shared set-up: repo root (ROOT) on sys.path, quiet TensorFlow, headless matplotlib.

The test markers (stack, train_cli, backend_state, end_to_end) are registered in pytest.ini;
.ci/run picks tests by them."""
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('MPLBACKEND', 'Agg')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import pytest  # noqa: E402


@pytest.fixture
def repo_root():
    return ROOT
