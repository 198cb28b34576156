#!/usr/bin/env bash
# Runs anygpt-jax on a Cloud TPU VM slice (or several slices) from a workstation with gcloud.
#
#   tpu_configs/launch/tpu_vm.sh [options] COMMAND [-- ARGS...]
#
# Commands (see tpu_configs/LAUNCH.md for the whole procedure):
#   create   create the slice(s): a TPU VM, or a queued resource of --num_slices nodes
#   setup    copy this checkout (git HEAD) to every worker and install it (setup_worker.sh)
#   check    on every worker: JAX sees the whole slice (process and device counts)
#   aot      compile ARGS' run for the accelerator on worker 0 only (python -m anygpt_jax.aot)
#   train    start `python -m anygpt_jax.train ARGS` on every worker at once, detached
#   logs     print the last lines of every worker's training log
#   stop     send SIGTERM to training everywhere (it checkpoints, then exits)
#   delete   delete the slice(s)
# Options:
#   --name NAME            TPU VM name (multi-slice: the node prefix, nodes NAME-0 ... NAME-N-1)
#   --zone ZONE            e.g. us-east5-a
#   --project PROJECT      default: gcloud's configured project
#   --accelerator TYPE     e.g. v5p-128, v4-64, v5litepod-256 (v5e); default v5p-128
#   --runtime VERSION      TPU VM image; default: the one Cloud TPU documents for the type
#   --num_slices N         slices joined over DCN (queued resource with N nodes); default 1
#   --spot                 create Spot capacity
#   --dry_run              print every command instead of running it
# Everything after `--` goes to the python command (train/aot), e.g.
#   tpu_vm.sh --name anygpt --zone us-east5-a train -- \
#     --gin_file=pretrain_7b/v5p-128.gin --gin.MODEL_DIR="'gs://$BUCKET/anygpt/pretrain'"
set -euo pipefail

NAME="" ZONE="" PROJECT="" ACCELERATOR="v5p-128" RUNTIME="" NUM_SLICES=1 SPOT=0 DRY_RUN=0
REMOTE_DIR="anygpt-jax"
LOG="anygpt-train.log"
PID_FILE="anygpt-train.pid"

die() { echo "tpu_vm.sh: $*" >&2; exit 2; }

COMMAND=""
while [ $# -gt 0 ]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --accelerator) ACCELERATOR="$2"; shift 2 ;;
    --runtime) RUNTIME="$2"; shift 2 ;;
    --num_slices) NUM_SLICES="$2"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --dry_run) DRY_RUN=1; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$COMMAND" ] || die "two commands: $COMMAND and $1"; COMMAND="$1"; shift ;;
  esac
done
ARGS=("$@")
[ -n "$COMMAND" ] || die "no command (create, setup, check, aot, train, logs, stop, delete)"
[ -n "$NAME" ] || die "--name is required"
[ -n "$ZONE" ] || die "--zone is required"
[[ "$NUM_SLICES" =~ ^[1-9][0-9]*$ ]] || die "--num_slices must be a positive integer"

if [ -z "$RUNTIME" ]; then
  case "$ACCELERATOR" in
    v4-*) RUNTIME="tpu-ubuntu2204-base" ;;
    v5p-*) RUNTIME="v2-alpha-tpuv5" ;;
    v5litepod-*|v5e-*) RUNTIME="v2-alpha-tpuv5-lite" ;;
    v6e-*) RUNTIME="v2-alpha-tpuv6e" ;;
    *) die "no default --runtime for accelerator $ACCELERATOR; pass one" ;;
  esac
fi
# Cloud TPU calls v5e slices v5litepod-N; our topology names (anygpt_jax.aot) say v5e-N.
GCLOUD_ACCELERATOR="${ACCELERATOR/#v5e-/v5litepod-}"
AOT_TOPOLOGY="${ACCELERATOR/#v5litepod-/v5e-}"

GCLOUD=(gcloud)
[ -n "$PROJECT" ] && GCLOUD+=(--project "$PROJECT")

# Prints the command (quoted so it can be pasted), then runs it unless --dry_run.
run() {
  printf '+'; printf ' %q' "$@"; printf '\n'
  [ "$DRY_RUN" -eq 1 ] || "$@"
}

nodes() {
  if [ "$NUM_SLICES" -eq 1 ]; then echo "$NAME"; else
    for i in $(seq 0 $((NUM_SLICES - 1))); do echo "$NAME-$i"; done
  fi
}

# Runs a shell command on every worker of every slice, the slices concurrently.
on_all_workers() {
  local remote="$1" pids=() node
  for node in $(nodes); do
    if [ "$DRY_RUN" -eq 1 ]; then  # printed in order; nothing to wait for
      run "${GCLOUD[@]}" compute tpus tpu-vm ssh "$node" --zone "$ZONE" --worker=all \
        --command "$remote"
      continue
    fi
    run "${GCLOUD[@]}" compute tpus tpu-vm ssh "$node" --zone "$ZONE" --worker=all \
      --command "$remote" &
    pids+=($!)
  done
  local status=0 pid
  for pid in "${pids[@]+"${pids[@]}"}"; do wait "$pid" || status=1; done
  return $status
}

quoted_args() { local out=""; for a in "${ARGS[@]+"${ARGS[@]}"}"; do out+=" $(printf '%q' "$a")"; done; echo "$out"; }

case "$COMMAND" in
  create)
    spot=(); [ "$SPOT" -eq 1 ] && spot=(--spot)
    if [ "$NUM_SLICES" -eq 1 ]; then
      run "${GCLOUD[@]}" compute tpus tpu-vm create "$NAME" --zone "$ZONE" \
        --accelerator-type "$GCLOUD_ACCELERATOR" --version "$RUNTIME" "${spot[@]+"${spot[@]}"}"
    else
      run "${GCLOUD[@]}" compute tpus queued-resources create "$NAME" --zone "$ZONE" \
        --accelerator-type "$GCLOUD_ACCELERATOR" --runtime-version "$RUNTIME" \
        --node-count "$NUM_SLICES" --node-prefix "$NAME" "${spot[@]+"${spot[@]}"}"
    fi
    ;;
  setup)
    repo="$(cd "$(dirname "$0")/../.." && pwd)"
    archive="$(mktemp -d)/anygpt-jax.tar.gz"
    run git -C "$repo" archive --format=tar.gz -o "$archive" HEAD
    for node in $(nodes); do
      run "${GCLOUD[@]}" compute tpus tpu-vm scp "$archive" "$node:anygpt-jax.tar.gz" \
        --zone "$ZONE" --worker=all
    done
    on_all_workers "rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar -xzf anygpt-jax.tar.gz -C $REMOTE_DIR && bash $REMOTE_DIR/tpu_configs/launch/setup_worker.sh"
    ;;
  check)
    on_all_workers "cd $REMOTE_DIR && python3 -c 'import jax; jax.distributed.initialize(); print(jax.process_index(), \"of\", jax.process_count(), \"processes;\", jax.device_count(), \"devices:\", jax.devices()[0].device_kind)'"
    ;;
  aot)
    node="$(nodes | head -n 1)"
    run "${GCLOUD[@]}" compute tpus tpu-vm ssh "$node" --zone "$ZONE" --worker=0 --command \
      "cd $REMOTE_DIR && python3 -m anygpt_jax.aot --topology=$AOT_TOPOLOGY --num_slices=$NUM_SLICES$(quoted_args)"
    ;;
  train)
    [ ${#ARGS[@]} -gt 0 ] || die "train needs the run's flags after --, e.g. -- --gin_file=pretrain_7b/v5p-128.gin"
    slices=""; [ "$NUM_SLICES" -gt 1 ] && slices=" --gin.NUM_SLICES=$NUM_SLICES"
    # Detached so the ssh sessions can end; every worker must start for any to proceed.
    on_all_workers "cd $REMOTE_DIR && setsid nohup python3 -m anygpt_jax.train$(quoted_args)$slices > ~/$LOG 2>&1 < /dev/null & echo \$! > ~/$PID_FILE; echo started on \$(hostname)"
    ;;
  logs)
    on_all_workers "echo == \$(hostname); tail -n 5 ~/$LOG"
    ;;
  stop)
    on_all_workers "[ -f ~/$PID_FILE ] && kill -TERM \$(cat ~/$PID_FILE) || true"
    ;;
  delete)
    if [ "$NUM_SLICES" -eq 1 ]; then
      run "${GCLOUD[@]}" compute tpus tpu-vm delete "$NAME" --zone "$ZONE" --quiet
    else
      run "${GCLOUD[@]}" compute tpus queued-resources delete "$NAME" --zone "$ZONE" --force --quiet
    fi
    ;;
  *) die "unknown command $COMMAND (create, setup, check, aot, train, logs, stop, delete)" ;;
esac
