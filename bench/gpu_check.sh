#!/usr/bin/env bash
# One prepared check for a single large NVIDIA GPU (H200), ≤ 10 min wall in all: merging and guided-decoding
# throughput, continuous vs static serving, one PPO step under DeepSpeed/NCCL/bf16, and `make demo` on CUDA.
#   bash bench/gpu_check.sh          # from a fresh checkout; GPU_CHECK_BUDGET_S (default 570) caps the total
# Every section has its own timeout (and never more than what is left of the budget); a failed section prints
# FAILED with its exit code and the next one runs. The summary table comes last.
set -u
cd "$(dirname "$0")/.." || exit 1
BUDGET=${GPU_CHECK_BUDGET_S:-570}
START=$SECONDS
PY=.venv/bin/python
WORK=${GPU_CHECK_DIR:-/tmp/gpu_check-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$WORK"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0  # no network on the GPU machine
NAMES=() RESULTS=() TIMES=()

# section NAME CAP FILTER CMD...: run CMD under `timeout` (CAP s, or what is left of the budget); FILTER empty:
# print all of its output, else only the lines matching that regex (plus the log's tail if it failed).
section() {
  local name=$1 cap=$2 filter=$3 t0=$SECONDS rc
  shift 3
  local left=$((BUDGET - (SECONDS - START)))
  local t=$((cap < left ? cap : left))
  printf '\n========== %s ==========\n$ %s\n' "$name" "$*"
  if ((t < 20)); then
    echo "SKIPPED: ${left} s of the ${BUDGET} s budget left"
    NAMES+=("$name") RESULTS+=("SKIPPED") TIMES+=(0)
    return
  fi
  echo "(timeout ${t} s; full log: $WORK/$name.log)"
  if [[ -z $filter ]]; then
    timeout -k 10 "$t" "$@" 2>&1 | tee "$WORK/$name.log"
    rc=${PIPESTATUS[0]}
  else
    timeout -k 10 "$t" "$@" >"$WORK/$name.log" 2>&1
    rc=$?
    grep -E "$filter" "$WORK/$name.log"
    ((rc == 0)) || tail -n 25 "$WORK/$name.log"
  fi
  local status=PASS
  ((rc == 0)) || status="FAILED (rc $rc$( ((rc == 124 || rc == 137)) && echo ', timeout'))"
  echo "--> $name: $status in $((SECONDS - t0)) s"
  NAMES+=("$name") RESULTS+=("$status") TIMES+=($((SECONDS - t0)))
}

# Ray sections can leave a head or workers behind when killed by their timeout: free the GPU for the next one.
ray_down() { .venv/bin/ray stop --force >/dev/null 2>&1 || true; }

# The PPO workers' per-step time (Ray Tune's result.json of each trial) and each backbone's fit wall time.
timings() {
  "$PY" - "$1" <<'EOF'
import json, pathlib, sys
root = pathlib.Path(sys.argv[1])
for f in sorted(root.rglob("result.json")):
    for line in f.read_text().splitlines():
        r = json.loads(line) if line.strip().startswith("{") else {}
        if "step_time_s" in r:
            print(f"  {r.get('backbone', f.parent.name)}: step {r.get('step')} step_time_s {r['step_time_s']:.2f}"
                  f" tokens_per_s {r.get('tokens_per_s', float('nan')):.0f}")
for f in sorted(root.rglob("manifest.json")):
    for b in json.loads(f.read_text()).get("backbones", []):
        print(f"  {b['name']}: train_seconds {b.get('train_seconds')} (whole Ray Train fit, start-up included)")
EOF
}

# 0. Environment: reuse .venv if it already imports the package, else build it with a CUDA-capable torch.
echo "========== setup =========="
if [[ -x $PY ]] && "$PY" -c 'import soupkitchen, torch, deepspeed' 2>/dev/null; then
  echo "reusing .venv"
else
  echo "\$ make install TORCH_SPEC='torch>=2.4'"
  timeout 420 make install TORCH_SPEC='torch>=2.4' || { echo "FAILED: make install (rc $?)"; exit 1; }
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "available", torch.cuda.is_available())'
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "CUDA is not available to this torch (a CPU wheel, or no driver): rm -rf .venv and rerun on a GPU machine"
  exit 1
fi
"$PY" -c 'import torch; print("device", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
echo "setup: $((SECONDS - START)) s"

# 1. Is serving a batch of different μ (per-row coefficient layer) close to one PEFT adapter and to W0?
section merging_throughput 80 "" \
  "$PY" bench/merging_throughput.py --recipe demo --device cuda --batch 1,16,64 --model.dtype bfloat16

# 2. What guidance costs on a GPU: MAGE-I-M (2 rows) and MOD (n rows) vs plain decoding.
section decoding_throughput 60 "" \
  "$PY" bench/decoding_throughput.py --recipe demo --device cuda --batch 1,16,64 --model.dtype bfloat16

# 3. Continuous vs static batching in the Serve app under Poisson arrivals of short and long requests.
section serve_load 110 "" \
  "$PY" bench/serve_load.py --recipe demo --device cuda --compare-batching --arrival poisson \
  --max-tokens 8,128 --concurrency 16 --requests 64 --rounds 1 --max-replicas 1
ray_down

# 4. The real training path on GPU: one PPO step, Ray Train worker, DeepSpeed ZeRO-2 on NCCL, bf16 (1 backbone).
PPO_DIR="$WORK/runs-ppo"
section ppo_deepspeed_bf16 150 'step [0-9]+/[0-9]+|manifest:|(Error|error):' \
  "$PY" jobs/train_backbones.py --recipe demo --method morlhf --soup.morlhf_preferences '[[0.5,0.5]]' \
  --ppo.steps 1 --run-name gpucheck-ppo --storage "$PPO_DIR" --device cuda --model.dtype bfloat16 \
  --distributed.use_gpu true --distributed.gpus_per_worker 1 --distributed.zero_stage 2
[[ -d $PPO_DIR ]] && timings "$PPO_DIR"
ray_down

# 5. `make demo` on CUDA (recipe dtype, float32): its two backbones share the GPU (0.5 each) and train at once.
DEMO_DIR="$WORK/runs-demo"
section make_demo 240 'step [0-9]+/[0-9]+|tok/s|wall time|HV|manifests:|(Error|error):' \
  make -o .venv/.installed demo ARGS="--device cuda --distributed.use_gpu true --distributed.gpus_per_worker 0.5 \
--run-name gpucheck-demo --storage $DEMO_DIR"
[[ -d $DEMO_DIR ]] && timings "$DEMO_DIR"
ray_down

printf '\n========== summary (%s s of %s s budget; logs in %s) ==========\n' "$((SECONDS - START))" "$BUDGET" "$WORK"
printf '%-22s %-28s %8s\n' section result seconds
for i in "${!NAMES[@]}"; do printf '%-22s %-28s %8s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "${TIMES[$i]}"; done
