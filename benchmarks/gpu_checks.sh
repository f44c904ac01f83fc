#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one run that fits a short lease (about 6.5 minutes on an
# H200): the CUDA tests, the EM unit at the R-50 head's size, bf16/fp16 against fp32 on toy-city
# val, the heaviest kernels of R-50's bf16 inference and training step (and the training step's
# memory), then bench_gpu.py for what time is left. Runs from a checkout, no install needed.
#
# Usage: bash benchmarks/gpu_checks.sh TOYCITY_ROOT OUT_DIR [BENCH_GPU_BUDGET_S]
# TOYCITY_ROOT holds the toy city's val split (emanet toycity ... as in the README). Wheels in
# .gpu/wheels (e.g. `pip download --no-deps imagecodecs -d .gpu/wheels`) are installed first.
set -uo pipefail
data=$1
out=$2
budget=${3:-170}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
device=${DEVICE:-cuda}  # DEVICE=cpu checks the script itself on a machine without a GPU
step() { echo; echo "=== $1 ($(date +%T))"; }

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$py -c "import torch, torchvision; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'torchvision', torchvision.__version__)"

step "wheels carried in .gpu/wheels (the device has no internet: imagecodecs for the loader)"
if compgen -G ".gpu/wheels/*.whl" >/dev/null; then
    site=$(mktemp -d)
    $py -m pip install -q --no-deps --no-index --target "$site" .gpu/wheels/*.whl \
        && export PYTHONPATH=$PYTHONPATH:$site
fi
$py -c "import imagecodecs; print('imagecodecs', imagecodecs.__version__)" \
    || echo "no imagecodecs: the loader decodes with torchvision.io"

step "tests/test_cuda.py"
timeout 240 $py -m pytest -q -p no:cacheprovider tests/test_cuda.py -m "slow or not slow" \
    --durations=5 2>&1 | tee "$out/test_cuda.log"

step "EM unit, the R-50 head at 2048x1024 (B=2, C=512, 128x256, K=64, T=3)"
(cd benchmarks && timeout 120 $py bench_ema.py --device "$device" --batch 2 --channels 512 \
    --height 128 --width 256 --repeat 20) 2>&1 | tee "$out/bench_ema.log"

step "bundled model on toy-city val: fp32, bf16, fp16"
for precision in fp32 bf16 fp16; do
    timeout 90 $py -m emanet eval --data "$data" --precision "$precision" --device "$device" \
        --out "$out/eval_$precision.json" 2>&1 | grep -E "^(mIoU|aAcc)|rror"
done

step "where R-50's bf16 inference spends its GPU time"
(cd benchmarks && timeout 90 $py profile_gpu.py) 2>&1 | tee "$out/profile.log"

step "where R-50's bf16 training step spends its GPU time and memory"
(cd benchmarks && timeout 120 $py profile_gpu.py --train --rows 20) 2>&1 \
    | tee "$out/profile_train.log"

# at 512x1024 (the targets; the 769 presets were measured on 2026-11-26).
step "bench_gpu.py (budget ${budget} s)"
(cd benchmarks && timeout $((budget + 150)) $py bench_gpu.py --budget "$budget" \
    --presets emanet_r50-d8_512x1024_80k_cityscapes emanet_r101-d8_512x1024_80k_cityscapes) \
    2>&1 | tee "$out/bench_gpu.log"
step "done"
