#!/usr/bin/env bash
# One prepared GPU check for a machine with one NVIDIA GPU and a fresh clone:
# installs (a venv with the CUDA build of torch from PyPI, then this package), synthesizes a
# set at the paper's image size, trains with params-paper.yaml (the shipped MiniLM as text
# encoder) for a fixed number of bf16 steps, and prints studies/s, peak GPU memory, the share
# of step time spent waiting for data, bf16-vs-fp32 score agreement on one batch and a
# one-process NCCL DDP step (benchmarks/gpu_check.py does the measuring).
#
#   bash benchmarks/gpu_check.sh                 # from the repository root (or anywhere)
#   TORCH_SPEC="torch==2.14.1 torchvision==0.29.1" bash benchmarks/gpu_check.sh
#   bash benchmarks/gpu_check.sh --steps 80      # extra arguments go to gpu_check.py
#
# Settings (environment): TORCH_SPEC  pip requirements for torch and torchvision (default:
# the PyPI wheels within pyproject's bounds, CUDA builds on Linux x86-64; add e.g.
# "--index-url https://download.pytorch.org/whl/cu126" for another CUDA); VENV (default .venv,
# the Makefile's); PYTHON (default python3); WORK (default $TMPDIR/limitr-gpu-check: the set,
# reused by a second run); DEVICE (default cuda); PY (a Python that already has the package
# and a torch: skips the install). Budget: under 8 minutes with the install.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-"torch>=2.1,<=2.14.1 torchvision>=0.16,<=0.29.1"}
WORK=${WORK:-${TMPDIR:-/tmp}/limitr-gpu-check}
DEVICE=${DEVICE:-cuda}

if [[ "$DEVICE" == cuda* ]] && ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check.sh: no nvidia-smi on PATH: this check needs an NVIDIA GPU with its driver (or DEVICE=cpu)" >&2
    exit 1
fi
if [[ "$DEVICE" == cuda* ]]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi

started=$(date +%s)
if [ -n "${PY:-}" ]; then
    echo "[gpu check] PY=$PY given: no install"
else
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV"
    fi
    PY="$VENV/bin/python"
    "$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip
    # shellcheck disable=SC2086  # TORCH_SPEC holds several words on purpose
    "$PY" -m pip install --quiet --disable-pip-version-check $TORCH_SPEC
    "$PY" -m pip install --quiet --disable-pip-version-check -e .
fi
installed=$(date +%s)
echo "[gpu check] install: $((installed - started)) s ($("$PY" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)'))"

status=0
"$PY" benchmarks/gpu_check.py --device "$DEVICE" --work "$WORK" \
    --install-seconds "$((installed - started))" --json "$WORK/gpu_check.json" "$@" || status=$?
echo "[gpu check] total: $(( $(date +%s) - started )) s (budget 480 s); figures in $WORK/gpu_check.json"
exit "$status"
