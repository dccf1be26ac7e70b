"""Shared set-up: repo root (ROOT) and benchmarks/ on sys.path, quiet TensorFlow, headless matplotlib, JAX's
compilation cache, the slowest test files collected first.

The test markers (stack, train_cli, backend_state, end_to_end) are registered in pytest.ini;
.ci/run picks tests by them."""
import os
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('MPLBACKEND', 'Agg')
# JAX: XLA's persistent compilation cache, so the many tests (and their subprocesses) that
# train the same tiny models compile each program once (the backend_state tests of
# test_robustness.py: 127 s -> 47 s on a 2-core CPU); entries are keyed by program and jax version
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'capsnet-tests-jax-cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the repo's modules, then benchmarks/ (bench.py, tensors.py: numpy in and out on any backend)
for path in (os.path.join(ROOT, 'benchmarks'), ROOT):
    if path not in sys.path:
        sys.path.insert(0, path)

import pytest  # noqa: E402


@pytest.fixture
def repo_root():
    return ROOT


# The test files that take longest (Keras 3 + TensorFlow, 2-core CPU, 2 pytest-xdist processes,
# 2026-12-01, pytest --durations: robustness ~50 s, multi-worker ~48 s, notebooks ~46 s,
# multi-device ~19 s, MultiMNIST models ~15 s, Efficient-CapsNet ~15 s, the CLI ~14 s; the
# others < 11 s), in that order. Collected first, they are the first files pytest-xdist hands
# out (.ci/run: --dist loadfile --no-loadscope-reorder), so the two processes do not end with
# one long file running alone.
SLOW_FIRST = ('test_robustness.py', 'test_multiworker.py', 'test_notebooks.py',
              'test_multidevice.py', 'test_multimnist_model.py', 'test_efficient.py',
              'test_cli.py')


def pytest_collection_modifyitems(items):
    def rank(item):
        name = os.path.basename(str(item.fspath))
        return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)
    items.sort(key=rank)  # stable: each file's tests keep their order
