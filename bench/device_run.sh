#!/usr/bin/env bash
# Issue 14's GPU figures in one prepared run, for a session that is lent a device machine
# (the `run` tool runs this in the repository root; results come back under $OUT):
#   bash bench/device_run.sh
# It installs the pinned requirements if torch is missing, then records the device, the precision
# each detector settles on (cfx/precision.py) and all seven methods on two demo defects per
# category with PatchCore and the VAE (bench_explainers.py), each section under a time limit.
set -uo pipefail
out="${OUT:-bench/out/device}"
mkdir -p "$out"
python -c "import torch" 2>/dev/null || pip install -q -r requirements.txt >"$out/pip.log" 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.csv" 2>&1
for det in patchcore vae; do
  timeout 240 python bench/bench_explainers.py --detector "$det" --no-baselines --images 2 --repeats 1 \
    --out "$out/explainers_$det.md" --json "$out/explainers_$det.json" 2>"$out/explainers_$det.err"
  echo "$det: exit $?" >>"$out/status.txt"
done
cat "$out"/explainers_*.md 2>/dev/null | head -80
