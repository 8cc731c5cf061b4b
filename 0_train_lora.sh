#!/usr/bin/env bash
# Train the rank-1 LoRA (or, with --full, the full finetune baseline) for one profile.
#
# Usage: bash 0_train_lora.sh [--profile tiny|paper|test|FILE.toml] [--model_size 32B] [--rank 1]
#            [--lr 1e-3] [--layer_start N --layer_end M | --last_third | --layer_indices 3,7,9]
#            [--layer_stride K] [--full] [any other flag of s1_peft/train.py --help]
#
# Environment (set here or export before):
#   NPROC       processes per node: its GPUs on a cluster (default: the GPUs CUDA_VISIBLE_DEVICES lists
#               when it is set, empty or -1 meaning none; else those nvidia-smi -L lists; else 1 CPU process)
#   ENGINE      zero3 (DeepSpeed ZeRO-3, default with more than one GPU in all) | ddp (torch DDP; gloo on CPU)
#   NNODES      nodes of a multi-node run (default: SLURM_NNODES, else 1); start this script once per node
#   NODE_RANK   this node's index, used for its log name (default: SLURM_NODEID, else 0); torchrun's c10d
#               rendezvous assigns the ranks
#   MASTER_ADDR host of the rendezvous (default: the first host of SLURM_JOB_NODELIST, by scontrol)
#   MASTER_PORT its port (default 29500)
#   RDZV_ID     rendezvous id shared by the nodes of one run (default: SLURM_JOB_ID, else rank1)
#   RANK1_ROOT  where runs, data and caches go (default: this repository)
#   RANK1_PRINT_ONLY=1  print the settings line (with the log file) and the data and training commands
#               instead of running them
# Re-running the same command resumes from the newest complete checkpoint.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"

# GPUs of this node: CUDA_VISIBLE_DEVICES when set (CUDA stops at the first negative id), else nvidia-smi
visible_gpus() {
  if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
    local n=0 id
    IFS=',' read -ra ids <<< "$CUDA_VISIBLE_DEVICES"
    for id in "${ids[@]}"; do
      id="${id// /}"
      case "$id" in ""|-*) break ;; esac
      n=$((n + 1))
    done
    echo "$n"
  else
    { nvidia-smi -L 2>/dev/null || true; } | grep -c '^GPU' || true
  fi
}
GPUS="$(visible_gpus)"
NPROC="${NPROC:-$(( GPUS > 0 ? GPUS : 1 ))}"
NNODES="${NNODES:-${SLURM_NNODES:-1}}"
NODE_RANK="${NODE_RANK:-${SLURM_NODEID:-0}}"
if [ -z "${MASTER_ADDR:-}" ] && [ -n "${SLURM_JOB_NODELIST:-}" ] && command -v scontrol >/dev/null; then
  MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)"
fi
MASTER_PORT="${MASTER_PORT:-29500}"
RDZV_ID="${RDZV_ID:-${SLURM_JOB_ID:-rank1}}"
if [ "$NNODES" -gt 1 ] && [ -z "${MASTER_ADDR:-}" ]; then
  echo "error: NNODES=$NNODES but no MASTER_ADDR: export MASTER_ADDR=<first node's host>, or run under SLURM" \
       "with scontrol on PATH" >&2
  exit 2
fi
ENGINE="${ENGINE:-$([ "$GPUS" -gt 0 ] && [ $((NNODES * NPROC)) -gt 1 ] && echo zero3 || echo ddp)}"
DS_CONFIG="${DS_CONFIG:-$REPO/configs/deepspeed_zero3.json}"
LOG_DIR="${RANK1_ROOT:-$REPO}/logs"
STAMP="$(date +%Y%m%d-%H%M%S)"

PROFILE="${RANK1_PROFILE:-tiny}"
ARGS=("$@")
for i in "${!ARGS[@]}"; do
  [ "${ARGS[$i]}" = "--profile" ] && PROFILE="${ARGS[$((i + 1))]}"
done
case " $* " in *" --help "*|*" -h "*) exec "$PY" "$REPO/s1_peft/train.py" --help ;; esac

# 1. Data in the s1 format (generated for the embedded default; checked for the paper profile)
DATA=("$PY" "$REPO/s1_peft/prepare_data.py" --profile "$PROFILE")

# 2. Training: one process, torchrun on this node, or torchrun's c10d rendezvous across nodes
EXTRA=()
[ "$ENGINE" = "zero3" ] && [ $((NNODES * NPROC)) -gt 1 ] && EXTRA=(--deepspeed "$DS_CONFIG")
if [ "$NNODES" -gt 1 ]; then
  TRAIN=("$PY" -m torch.distributed.run
    --nnodes "$NNODES"
    --nproc_per_node "$NPROC"
    --rdzv_backend c10d
    --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT"
    --rdzv_id "$RDZV_ID"
    "$REPO/s1_peft/train.py" "$@" "${EXTRA[@]}")
elif [ "$NPROC" -gt 1 ]; then
  TRAIN=("$PY" -m torch.distributed.run
    --nproc_per_node "$NPROC"
    --master_port "$MASTER_PORT"
    "$REPO/s1_peft/train.py" "$@" "${EXTRA[@]}")
else
  TRAIN=("$PY" "$REPO/s1_peft/train.py" "$@")
fi

NODE_TAG=""
[ "$NNODES" -gt 1 ] && NODE_TAG="-node$NODE_RANK"
LOG="$LOG_DIR/train-$(basename "$PROFILE" .toml)-$STAMP$NODE_TAG.log"  # a profile path/to/my.toml logs as my
echo "profile=$PROFILE nnodes=$NNODES node_rank=$NODE_RANK nproc=$NPROC engine=$ENGINE log=$LOG"
if [ "${RANK1_PRINT_ONLY:-0}" = "1" ]; then
  printf '%q ' "${DATA[@]}"; echo
  printf '%q ' "${TRAIN[@]}"; echo
  exit 0
fi
mkdir -p "$LOG_DIR"
"${DATA[@]}" 2>&1 | tee "$LOG"
"${TRAIN[@]}" 2>&1 | tee -a "$LOG"
