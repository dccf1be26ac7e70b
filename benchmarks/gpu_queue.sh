#!/usr/bin/env bash
# The GPU queue of the trained-models and speed issues, for a session lent a GPU machine by the
# device tool (its `run` copies this checkout there; JAX and h5py are there, Keras is not).
#
#   bash benchmarks/gpu_queue.sh wheels        # HERE, once: Keras 3 + namex + optree (py3.12
#                                              # wheels) and idx2numpy (sdist) into .whl/
#   then device `run`s with carry [".whl"] and timeout_s 590 (a call may run 10 minutes), e.g.
#   "bash benchmarks/gpu_queue.sh smoke table1" first, then "SECS=520 bash ... table1" while
#   Table 1 lacks runs, then "capsnet bench"
#
# Steps (each writes what comes back under $OUT, at most 8 files a call: logs, weights split
# into 15 MiB parts with their sha256, the device's name):
#   smoke            the exact training command on 1,000 images, 1 epoch (seconds)
#   capsnet          the paper CapsNet r3 + decoder, --seed 0, 50 epochs, in
#                    /tmp/runs/capsnet_r3 on the device; is stopped after $SECS seconds (default
#                    420; killed mid-epoch, it resumes from the epoch before) and continues with
#                    --resume in the next call while the machine is warm (as many epochs as fit)
#   table1           the Table 1 configurations named in $CONFIGS (default: those the CPU logs
#                    in CSV_data/table1/ lack or have not finished), side by side on the GPU,
#                    bf16, --seed 0 (a name's _seedN says otherwise), 30 epochs (r3_recon 50),
#                    in /tmp/runs/NAME; stopped after
#                    $SECS seconds (default 480) and continued with --resume in the next call
#                    while the machine is warm; brings back each log as table1_NAME.csv
#   flags            (here) prints the training flags table1 would use for each of $CONFIGS
#   bench            benchmarks/bench.py: routings 1/2/3, float32 and bf16, batch 100
# Reassemble weights here: cat capsnet_r3_best.h5.part-* > best_model.h5, then
# python export_weights.py --model capsnet -w best_model.h5 --out pretrained/capsnet_r3.h5 --log ...
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "error: name steps: wheels, or smoke / capsnet / table1 / bench"; exit 2; }

table1_flags() {  # a Table 1 configuration's name -> its training flags (CSV_data/README.md)
  local seed=0
  case "$1" in *_seed[0-9]) seed="${1##*_seed}" ;; esac
  case "${1%_seed[0-9]}" in
    r1_recon) echo "--routings 1 --lam_recon 0.392" ;;
    r2_recon) echo "--routings 2 --lam_recon 0.392" ;;
    r3_recon) echo "--routings 3 --lam_recon 0.392" ;;
    r1_norecon) echo "--routings 1 --lam_recon 0" ;;
    r3_norecon) echo "--routings 3 --lam_recon 0" ;;
    cnn) echo "--model cnn" ;;  # Table 1's baseline on MNIST (35.4M parameters)
    cnn_pooled) echo "--model cnn --pools 2 --fc1_units 656" ;;  # the CapsNet-sized CNN
    *) return 1 ;;
  esac
  local epochs=30
  [ "$1" = r3_recon ] && epochs=50  # Table 1's main row; its other seeds run 30
  echo "--seed $seed --epochs $epochs --mixed_precision bf16"
}
CONFIGS="${CONFIGS:-cnn r2_recon r3_recon_seed1 r3_recon_seed2}"
for name in $CONFIGS; do  # before the machine's time is spent on anything
  table1_flags "$name" > /dev/null || { echo "error: unknown Table 1 configuration $name"; exit 2; }
done

if [ "$1" = flags ]; then  # what table1 would run, a configuration a line
  for name in $CONFIGS; do echo "$name:" $(table1_flags "$name"); done
  exit 0
fi

if [ "$1" = wheels ]; then  # on this (networked) machine
  mkdir -p .whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    keras==3.15.1 namex optree
  python3 -m pip download -q --no-deps --no-binary=:all: -d .whl "idx2numpy>=1.2.3"
  ls .whl
  exit 0
fi

OUT="${OUT:?run this step through the device tool (it sets OUT)}"
SITE=/tmp/site
export PYTHONPATH="$SITE" KERAS_BACKEND=jax PYTHONUNBUFFERED=1 MPLBACKEND=Agg
if ! python3 -c "import keras, idx2numpy" 2>/dev/null; then  # the first call on a fresh machine
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl || exit 3
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir \
    --target "$SITE" .whl/idx2numpy-*.tar.gz || exit 3
fi
nvidia-smi -L > "$OUT/device.txt" 2>&1
python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)" \
  | tee -a "$OUT/device.txt"

bring_back() {  # run folder, name: its log and best weights (split, sha256) into $OUT
  local dir="$1" name="$2"
  cp "$dir/log.csv" "$OUT/${name}_log.csv" 2>/dev/null
  [ -f "$dir/best_model.h5" ] && split -b 15M -d "$dir/best_model.h5" "$OUT/${name}_best.h5.part-"
  [ -f "$dir/best_model.h5" ] && sha256sum "$dir/best_model.h5" >> "$OUT/${name}_tail.txt"
}

for step in "$@"; do case "$step" in
  smoke)
    start=$SECONDS
    python3 capsulenet.py --routings 3 --seed 0 --epochs 1 --train_samples 1000 \
      --test_samples 500 --save_dir /tmp/runs/smoke --overwrite 2>&1 | tail -c 4000 > "$OUT/smoke.txt"
    echo "smoke: rc ${PIPESTATUS[0]}, $((SECONDS - start)) s" | tee -a "$OUT/smoke.txt"
    cat /tmp/runs/smoke/log.csv >> "$OUT/smoke.txt" 2>/dev/null ;;
  capsnet)
    dir=/tmp/runs/capsnet_r3 secs="${SECS:-420}"
    # a later call: as many whole epochs as fit in secs (the log's epoch times, 60 s for the
    # start); the first call: until the timeout (checkpoints are written whole, so a run killed
    # mid-epoch resumes from the epoch before)
    more=(--overwrite)  # no finished epoch yet: start afresh
    [ "$(cat "$dir/log.csv" 2>/dev/null | wc -l)" -gt 1 ] && more=(--resume --epochs "$(python3 - "$dir/log.csv" "$secs" <<'PY'
import sys, pandas
log, secs = pandas.read_csv(sys.argv[1]), float(sys.argv[2])
print(min(50, len(log) + max(1, int((secs - 60) / log['epoch_time'].max()))))
PY
)")
    timeout "$secs" python3 capsulenet.py --routings 3 --seed 0 --save_dir "$dir" \
      "${more[@]}" > "$OUT/capsnet_stdout.txt" 2>&1
    echo "capsnet: rc $? (${more[*]})" >> "$OUT/capsnet_stdout.txt"
    tail -c 8000 "$OUT/capsnet_stdout.txt" > "$OUT/capsnet_r3_tail.txt" && rm "$OUT/capsnet_stdout.txt"
    bring_back "$dir" capsnet_r3 ;;
  table1)
    # several small processes keep one GPU busier than one; each takes a share of its memory
    export XLA_PYTHON_CLIENT_PREALLOCATE=false
    mkdir -p /tmp/runs
    for name in $CONFIGS; do
      timeout "${SECS:-480}" python3 capsulenet.py $(table1_flags "$name") \
        --save_dir "/tmp/runs/$name" --resume >> "/tmp/runs/$name.out" 2>&1 &
    done
    wait
    for name in $CONFIGS; do
      cp "/tmp/runs/$name/log.csv" "$OUT/table1_$name.csv" 2>/dev/null
      { echo "== $name"; tail -c 1500 "/tmp/runs/$name.out"; echo; } >> "$OUT/table1_tail.txt"
    done ;;
  bench)
    python3 benchmarks/bench.py --backends jax --routings 1,2,3 --precision off,bf16 \
      --steps 20 --warmup 3 --out "$OUT/bench_gpu.md" > "$OUT/bench.txt" 2>&1
    echo "bench: rc $?" >> "$OUT/bench.txt" ;;
  *) echo "error: unknown step $step (smoke, capsnet, table1, bench)"; exit 2 ;;
esac; done
