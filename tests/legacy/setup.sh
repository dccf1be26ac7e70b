#!/usr/bin/env bash
# Sets up the keras 2.2.4 test stack: the real keras==2.2.4 package on TensorFlow 2's
# tf.compat.v1 graph mode (TF 1.15 installs on no Python this side of 3.7), with this repo's
# own needs, then checks it. See tests/legacy/README.md for what the shim restores.
#
#   bash tests/legacy/setup.sh                 # idempotent; ~2 min the first time
#   source "$LEGACY_ROOT/env.sh"; python -m pytest tests -m "stack or end_to_end or backend_state"
#
# LEGACY_ROOT: the folder it fills (default ~/.cache/capsnet-legacy):
#   venv/      a venv of $PYTHON (3.11 or 3.12): TensorFlow (CPU) and the pins below
#   keras224/  keras 2.2.4 + keras-applications + keras-preprocessing, installed --no-deps, so
#              they neither pull TF 1 nor replace the Keras 3 that TensorFlow installs in venv/
#   env.sh     `source` it: the venv, keras224/ then this folder's shim/ first on PYTHONPATH
# Any step that fails stops the script with a non-zero exit (.ci/run then fails the stack).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="${LEGACY_ROOT:-$HOME/.cache/capsnet-legacy}"
# Python 3.11 or 3.12: scipy 1.17 needs >= 3.11, numpy 1.26 has no wheels past 3.12
PY="${PYTHON:-$(command -v python3.11 || command -v python3.12 || echo python3)}"
SHIM="$HERE/shim"

# Pinned, so every machine tests the same stack. numpy stays 1.x: keras 2.2.4 uses np.string_.
# tensorboard: --debug refuses to run without it (runsetup.check_tensorboard), and TF 2.21 no
# longer installs it.
STACK=(tensorflow-cpu==2.21.0 numpy==1.26.4 h5py==3.14.0 scipy==1.17.1 pyyaml==6.0.3 six==1.17.0
       tensorboard==2.21.0)
# what this repo and its tests import besides the stack (requirements.txt's "both stacks")
REPO=(pandas==3.0.6 matplotlib==3.11.2 pillow==13.0.0 idx2numpy==1.2.3 pytest==9.2.0 pytest-xdist==3.8.0)
KERAS224=(keras==2.2.4 keras-applications==1.0.8 keras-preprocessing==1.1.2)

fail() { echo "error: legacy harness: $*" >&2; exit 1; }
[ -f "$SHIM/sitecustomize.py" ] || fail "missing $SHIM/sitecustomize.py"
"$PY" -c 'import sys; assert sys.version_info[:2] in [(3, 11), (3, 12)]' 2>/dev/null \
  || fail "needs Python 3.11 or 3.12 ('$PY' is not one; set PYTHON=/path/to/python3.11)"
mkdir -p "$ROOT"
ROOT="$(cd "$ROOT" && pwd)"

[ -x "$ROOT/venv/bin/python" ] || "$PY" -m venv "$ROOT/venv" || fail "cannot make $ROOT/venv"
"$ROOT/venv/bin/python" -m pip install -q "${STACK[@]}" "${REPO[@]}" || fail "pip install into $ROOT/venv"
# --upgrade: replace an earlier keras224/ in place (pip --target leaves it otherwise)
"$ROOT/venv/bin/python" -m pip install -q --no-deps --upgrade --target "$ROOT/keras224" "${KERAS224[@]}" \
  || fail "pip install keras 2.2.4 into $ROOT/keras224"

cat > "$ROOT/env.sh" <<EOF
# source me: keras 2.2.4 on TensorFlow 2's tf.compat.v1 graph mode (written by $HERE/setup.sh)
source "$ROOT/venv/bin/activate"
export PYTHONPATH="$ROOT/keras224:$SHIM\${PYTHONPATH:+:\$PYTHONPATH}"
export KERAS_BACKEND=tensorflow
EOF

# the check: the real 2.2.4 on a graph-mode TF, and its batch_dot semantics (capsule routing
# depends on them; Keras >= 2.3 changed them)
( source "$ROOT/env.sh"
  TF_CPP_MIN_LOG_LEVEL=2 python - <<'EOF'
import keras, numpy as np, tensorflow as tf
from keras import backend as K
shape = K.int_shape(K.batch_dot(K.placeholder((None, 10, 16)), K.placeholder((None, 10, 1152, 16)), [2, 3]))
print('keras %s, tensorflow %s (eager %s), numpy %s, batch_dot -> %s'
      % (keras.__version__, tf.__version__, tf.executing_eagerly(), np.__version__, shape))
assert keras.__version__ == '2.2.4' and not tf.executing_eagerly() and shape == (None, 10, 1152)
EOF
) || fail "the check of $ROOT failed (output above)"
echo "legacy harness ready: source $ROOT/env.sh"
