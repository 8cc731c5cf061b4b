#!/usr/bin/env bash
# Train the rank-1 LoRA (or, with --full, the full finetune baseline) for one profile.
#
# Usage: bash 0_train_lora.sh [--profile tiny|paper|test|FILE.toml] [--model_size 32B] [--rank 1]
#            [--lr 1e-3] [--layer_start N --layer_end M | --last_third | --layer_indices 3,7,9]
#            [--layer_stride K] [--full] [any other flag of s1_peft/train.py --help]
#
# Environment (set here or export before):
#   NPROC      processes: GPUs on a cluster (default: all visible GPUs, else 1 CPU process)
#   ENGINE     zero3 (DeepSpeed ZeRO-3, default with >1 GPU) | ddp (torch DDP; gloo on CPU)
#   RANK1_ROOT where runs, data and caches go (default: this repository)
# Re-running the same command resumes from the newest complete checkpoint.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
GPUS="$(nvidia-smi -L 2>/dev/null | wc -l || true)"
NPROC="${NPROC:-$(( GPUS > 0 ? GPUS : 1 ))}"
ENGINE="${ENGINE:-$([ "$GPUS" -gt 1 ] && echo zero3 || echo ddp)}"
DS_CONFIG="${DS_CONFIG:-$REPO/configs/deepspeed_zero3.json}"
LOG_DIR="${RANK1_ROOT:-$REPO}/logs"
STAMP="$(date +%Y%m%d-%H%M%S)"

PROFILE="${RANK1_PROFILE:-tiny}"
ARGS=("$@")
for i in "${!ARGS[@]}"; do
  [ "${ARGS[$i]}" = "--profile" ] && PROFILE="${ARGS[$((i + 1))]}"
done
case " $* " in *" --help "*|*" -h "*) exec "$PY" "$REPO/s1_peft/train.py" --help ;; esac

mkdir -p "$LOG_DIR"
LOG="$LOG_DIR/train-$PROFILE-$STAMP.log"
echo "profile=$PROFILE nproc=$NPROC engine=$ENGINE log=$LOG"

# 1. Data in the s1 format (generated for the embedded default; checked for the paper profile)
"$PY" "$REPO/s1_peft/prepare_data.py" --profile "$PROFILE" 2>&1 | tee "$LOG"

# 2. Training
if [ "$NPROC" -gt 1 ]; then
  EXTRA=()
  [ "$ENGINE" = "zero3" ] && EXTRA=(--deepspeed "$DS_CONFIG")
  "$PY" -m torch.distributed.run \
    --nproc_per_node "$NPROC" \
    --master_port "${MASTER_PORT:-29500}" \
    "$REPO/s1_peft/train.py" "$@" "${EXTRA[@]}" 2>&1 | tee -a "$LOG"
else
  "$PY" "$REPO/s1_peft/train.py" "$@" 2>&1 | tee -a "$LOG"
fi
