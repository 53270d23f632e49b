#!/usr/bin/env bash
# The accelerator benchmarks whose figures docs/results.md quotes, in one go (about 8 minutes on one H100,
# 15 at most: each has a time limit). Each writes NAME.txt (what it printed: machine, settings,
# command, table), the protection benchmarks NAME.json too.
#
#   OUT=results bash benchmarks/run_gpu.sh [TRAINED_MAPS.npz]
#   ONLY=throughput_koncept512,bf16_agreement,full_resolution bash benchmarks/run_gpu.sh   # a subset
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
  if [ -n "${ONLY:-}" ] && [[ ",$ONLY," != *",$name,"* ]]; then return; fi
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
# Throughput (issue: speed): KonCept512 fp32 and bf16, BatchNorm folded or not, batches 16..128.
run throughput_koncept512 360 "$PY" benchmarks/attack_throughput.py --models koncept512 --batch-sizes 16,32,64,128 \
  --loops device --dtypes fp32,bf16 --fold on,off --steps 20 --repeats 2 --json "$OUT/throughput_koncept512.json"
run throughput_default 120 "$PY" benchmarks/attack_throughput.py --models default --batch-sizes 1,32,128 \
  --loops device,host --dtypes fp32,bf16 --steps 20 --repeats 3
run bf16_agreement 120 "$PY" benchmarks/bf16_agreement.py --steps 100 --json "$OUT/bf16_agreement.json"
run full_resolution 120 "$PY" benchmarks/full_resolution.py --steps 20
