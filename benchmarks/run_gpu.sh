#!/usr/bin/env bash
# The accelerator benchmarks whose figures the README quotes, in one go (about 8 minutes on one H100,
# 15 at most: each has a time limit). Each writes NAME.txt (what it printed: machine, settings,
# command, table), the protection benchmarks NAME.json too.
#
#   OUT=results bash benchmarks/run_gpu.sh [TRAINED_MAPS.npz]
#
# TRAINED_MAPS.npz: a trained sensitivity network's maps of the example photos, written beforehand
# by `benchmarks/sensitivity_effect.py --trained CKPT --write-trained-maps F.npz` (optional).
# Compiled programs are cached in $JAX_COMPILATION_CACHE_DIR (default: a temporary folder), so the
# benchmarks share the attack programs they have in common.
set -u
OUT=${OUT:-benchmark-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" XLA_PYTHON_CLIENT_PREALLOCATE=false
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$(mktemp -d)}
PY=${PY:-python3}
TRAINED=()
if [ $# -ge 1 ]; then TRAINED=(--trained-maps "$1"); fi

run() {  # run NAME SECONDS COMMAND...: time-limited, output kept in $OUT/NAME.txt
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*"
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  tail -n 40 "$OUT/$name.txt"
  echo "== $name: exit $rc"
}

run alpha_sweep 150 "$PY" benchmarks/alpha_sweep.py --alphas 1,2,5,10,20,30,40,50 --steps 100 \
  --robust-jpeg 90 --robust-confidences 0,10 --json "$OUT/alpha_sweep.json"
run jpeg_robustness 110 "$PY" benchmarks/jpeg_robustness.py --alphas 5,10,20,40 --steps 100 \
  --confidences 0,10 --json "$OUT/jpeg_robustness.json"
run sensitivity_effect 80 "$PY" benchmarks/sensitivity_effect.py --steps 100 --search-steps 5 \
  "${TRAINED[@]}" --json "$OUT/sensitivity_effect.json"
run throughput_koncept512_b16 200 "$PY" benchmarks/attack_throughput.py --models koncept512 --batch-sizes 16 \
  --steps 20 --repeats 2 --no-loop-baseline
run throughput_b32 200 "$PY" benchmarks/attack_throughput.py --models koncept512,default --batch-sizes 32 \
  --steps 20 --repeats 2 --no-loop-baseline
run throughput_default 120 "$PY" benchmarks/attack_throughput.py --models default --batch-sizes 1,32 \
  --steps 20 --repeats 3
