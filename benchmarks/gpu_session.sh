#!/usr/bin/env bash
# Every prepared GPU check of the project in ONE command, for a session lent an NVIDIA GPU (an H200: ~5 of its
# 15 minutes). The device machine has torch + CUDA, numpy, onnxruntime (CPU), pytest, no ROS, no rosbags, no
# TensorRT, no ../shared: its data travel in gpu_carry/ (git-ignored), made HERE first:
#
#   .venv/bin/python benchmarks/gpu_session_prepare.py       # frames .npz + post-processing cache, ~30 MiB
#   device tool: run(command="bash benchmarks/gpu_session.sh", carry=["gpu_carry"], timeout_s=560)
#
# Steps (each with its own timeout, all inside GPU_SESSION_BUDGET seconds, default 520; a failing step does not
# stop the next): env, tests (pytest -k cuda), frame (gpu_frame.py), syncs (bench_syncs.py), half
# (gpu_half_check.py), postprocess (bench_postprocess.py on CUDA), tensorrt (only where tensorrt imports), replay
# (skipped without rclpy).
# Results: $OUT/gpu_session.md (step table + every results .md), $OUT/session.log (all output), the results .md
# files and pytest_cuda.log; on the device they are also written to benchmarks/results/ (copy them from $OUT into
# benchmarks/results/ here and commit them, naming the GPU).
#
#   bash benchmarks/gpu_session.sh --list              # the step list (name, timeout, what)
#   bash benchmarks/gpu_session.sh --only frame,half   # a subset (e.g. a rerun)
#   GPU_SESSION_ALLOW_CPU=1 bash benchmarks/gpu_session.sh   # dry run HERE: every step on the CPU, smallest sizes,
#       with the device's missing modules blocked and no shared data, results to /tmp (nothing in the repo changes)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD

# name|timeout s (H200)|what
STEPS=(
  "env|30|python, torch, CUDA device, the package importable"
  "tests|130|pytest -k cuda: tests/test_frame.py test_fps.py test_meanshift.py test_merging.py test_precision.py test_syncs.py"
  "frame|120|benchmarks/gpu_frame.py: frame latency on CUDA (p50 <= 100 ms shipped, <= 250 ms paper config)"
  "syncs|45|benchmarks/bench_syncs.py --device cuda: host-device syncs per frame on CUDA (counter + sync debug mode)"
  "half|110|benchmarks/gpu_half_check.py: fp16/bf16 inference and AMP training on CUDA"
  "postprocess|100|benchmarks/bench_postprocess.py --real-only --device cuda (batched vs per-block references)"
  "tensorrt|150|benchmarks/gpu_tensorrt_check.py (only where tensorrt imports)"
  "replay|5|benchmarks/gpu_check_robot.sh's ROS replay (skipped where rclpy is missing)"
)

ONLY=""
case "${1:-}" in
  --list) for step in "${STEPS[@]}"; do IFS='|' read -r name limit what <<<"$step"; printf '%-12s %4ss  %s\n' \
            "$name" "$limit" "$what"; done; exit 0 ;;
  --only) ONLY=",${2:?--only needs a comma-separated list of steps},";;
  "") ;;
  *) echo "usage: bash benchmarks/gpu_session.sh [--list | --only STEP,...]" >&2; exit 2 ;;
esac

if [ -x .venv/bin/python ]; then PY=${PY:-$ROOT/.venv/bin/python}; else PY=${PY:-python3}; fi
DRY=${GPU_SESSION_ALLOW_CPU:-0}
BUDGET=${GPU_SESSION_BUDGET:-520}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"      # the package without installing it (no deps there)
export MPNET_FRAMES_NPZ=${MPNET_FRAMES_NPZ:-$ROOT/gpu_carry/frames.npz}
export MPNET_ALLOW_MISSING_SHARED=1                       # no rclpy / launch there: those layers skip
export MPNET_CACHE_DIR=${MPNET_CACHE_DIR:-/tmp/mpnet-gpu-session-cache}
if [ "$DRY" = 1 ]; then
  OUT=${OUT:-/tmp/gpu_session_out}
  RESULTS=/tmp/gpu_session_results                        # the dry run leaves benchmarks/results alone
  export MPNET_SHARED_DATA=/nonexistent/shared/data        # as on the device: only gpu_carry/
  export PYTHONPATH="$ROOT/benchmarks/device_like:$PYTHONPATH"   # sitecustomize: block what the device lacks
  export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
  export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1                  # the venv's launch_* pytest plugins would import rclpy
  NICE="nice -n 10"
else
  OUT=${OUT:-$ROOT/out/gpu_session}
  RESULTS=$ROOT/benchmarks/results
  NICE=""
fi
mkdir -p "$OUT" "$RESULTS" cache
LOG=$OUT/session.log
SUMMARY=$OUT/gpu_session.md
: >"$LOG"
STAMP=$(mktemp)                                           # results newer than this were written by this session
START=$SECONDS
declare -a TABLE=()

log() { echo "$*" | tee -a "$LOG"; }

limit_of() { local step; for step in "${STEPS[@]}"; do [ "${step%%|*}" = "$1" ] && { step=${step#*|}; echo "${step%%|*}"; \
  return; }; done; echo "gpu_session: no step $1" >&2; exit 2; }

# run_step NAME CMD...: the step under min(its timeout, time left), output to the log; records its status.
run_step() {
  local name=$1 limit; limit=$(limit_of "$1") || exit 2; shift
  local left=$((BUDGET - (SECONDS - START) - 15))
  if [ "$left" -lt 20 ]; then
    log "== $name: SKIPPED (only ${left}s of the ${BUDGET}s budget left)"; TABLE+=("| $name | skipped: no time left | - |")
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  log "== $name (timeout ${limit}s, $((SECONDS - START))s into the session): $*"
  local t0=$SECONDS rc
  timeout -k 10 "$limit" $NICE "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  local status="ok"
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status="TIMEOUT after ${limit}s"; elif [ "$rc" -ne 0 ]; then
    status="FAILED (exit $rc)"; fi
  log "== $name: $status in $((SECONDS - t0))s"
  TABLE+=("| $name | $status | $((SECONDS - t0)) |")
}

skip_step() { log "== $1: SKIPPED ($2)"; TABLE+=("| $1 | skipped: $2 | - |"); }

wanted() { [ -z "$ONLY" ] || [[ "$ONLY" == *",$1,"* ]]; }

if [ "$DRY" = 1 ]; then DEVICE=cpu; else DEVICE=cuda; fi
log "# GPU session $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'),"\
" dry run: $DRY, python: $PY, budget ${BUDGET}s"
[ -f "$MPNET_FRAMES_NPZ" ] || log "WARNING: $MPNET_FRAMES_NPZ missing: run benchmarks/gpu_session_prepare.py here and carry gpu_carry"
if [ -d gpu_carry/cache ]; then cp -n gpu_carry/cache/*.npz cache/ 2>/dev/null; fi   # frame_blocks.py's cache

if wanted env; then
  run_step env "$PY" -c "
import sys, torch, numpy, onnxruntime
import mpnet_model
print('python', sys.version.split()[0], 'torch', torch.__version__, 'CUDA', torch.version.cuda, 'numpy',
      numpy.__version__, 'onnxruntime', onnxruntime.__version__)
print('mpnet_model from', mpnet_model.__file__)
if not torch.cuda.is_available():
    sys.exit('no CUDA device visible to torch' if '$DEVICE' == 'cuda' else 0)
print('GPU', torch.cuda.get_device_name(), 'bf16', torch.cuda.is_bf16_supported(),
      f'{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB')
"
  if [ "$DRY" != 1 ]; then nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv \
    2>&1 | tee -a "$LOG"; fi
fi
GPU_OK=1
if [ "$DRY" != 1 ] && ! "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  GPU_OK=0; log "no CUDA device: the GPU steps are skipped (GPU_SESSION_ALLOW_CPU=1 for a dry run on the CPU)"
fi

if wanted tests; then
  if ! "$PY" -c 'import pytest' 2>/dev/null; then skip_step tests "pytest is not installed for $PY"
  else
    run_step tests "$PY" -m pytest -q -p no:cacheprovider -rs -k cuda --junitxml "$OUT/pytest_cuda.xml" \
      tests/test_frame.py tests/test_fps.py tests/test_meanshift.py tests/test_merging.py tests/test_precision.py \
      tests/test_syncs.py
    # the junit file becomes a short text log (fewer, readable files come back)
    "$PY" - "$OUT/pytest_cuda.xml" "$OUT/pytest_cuda.log" <<'EOF' 2>&1 | tee -a "$LOG"
import sys, xml.etree.ElementTree as ET
from pathlib import Path
source, target = Path(sys.argv[1]), Path(sys.argv[2])
if source.is_file():
    lines = []
    for case in ET.parse(source).getroot().iter('testcase'):
        state = next((c.tag for c in case if c.tag in ('failure', 'error', 'skipped')), 'passed')
        message = next((c.get('message', '')[:200] for c in case if c.tag != 'system-out'), '')
        lines.append(f"{state:8} {case.get('classname')}::{case.get('name')} {case.get('time')}s {message}")
    target.write_text('\n'.join(lines) + '\n')
    source.unlink()
    print(f'{sum(l.startswith("passed") for l in lines)} passed of {len(lines)} CUDA tests (pytest_cuda.log)')
EOF
  fi
fi

if [ "$GPU_OK" = 1 ]; then
  if [ "$DRY" = 1 ]; then
    FRAME_ARGS=(--device cpu --range 6 --scans 1 --repeats 1); HALF_ARGS=(--device cpu --steps 2 --batch 2)
    SYNC_ARGS=(--device cpu --range 6)
    POST_ARGS=(--device cpu --frames office --repeats 1 --machine-note "Dry run on the shared CPU machine")
  else
    FRAME_ARGS=(--device cuda --repeats 2); HALF_ARGS=(--device cuda); SYNC_ARGS=(--device cuda)
    POST_ARGS=(--device cuda --frames ouster0,ouster1,office --repeats 3
               --machine-note "Lent GPU machine, not shared with other jobs")
  fi
  wanted frame && run_step frame "$PY" benchmarks/gpu_frame.py --skip-tests "${FRAME_ARGS[@]}" \
    --out "$RESULTS/frame_gpu.md"
  wanted syncs && run_step syncs "$PY" benchmarks/bench_syncs.py --skip-before --skip-speed "${SYNC_ARGS[@]}" \
    --out "$RESULTS/syncs_gpu.md"
  wanted half && run_step half "$PY" benchmarks/gpu_half_check.py "${HALF_ARGS[@]}" --out "$RESULTS/gpu_half.md"
  wanted postprocess && run_step postprocess "$PY" benchmarks/bench_postprocess.py --real-only "${POST_ARGS[@]}" \
    --out "$RESULTS/postprocess_cuda.md"
  if wanted tensorrt; then
    if "$PY" -c 'import tensorrt' 2>/dev/null; then
      run_step tensorrt "$PY" benchmarks/gpu_tensorrt_check.py --repeats 10 --out "$RESULTS/tensorrt_gpu.md"
    else
      skip_step tensorrt "TensorRT not installed (tensorrt does not import): not measured"
    fi
  fi
else
  for name in frame syncs half postprocess tensorrt; do wanted "$name" && skip_step "$name" "no CUDA device"; done
fi
if wanted replay; then
  if "$PY" -c 'import rclpy' 2>/dev/null; then
    skip_step replay "rclpy is here, but the 30 s-per-configuration replay does not fit this budget: run bash benchmarks/gpu_check_robot.sh"
  else
    skip_step replay "no rclpy / ROS 2 on this machine: the ROS replay (benchmarks/gpu_check_robot.sh) needs a robot-like machine"
  fi
fi

# Results back: one combined markdown, the log, each results file (<= 8 files in $OUT, flat).
{
  echo "# GPU session ($(date -u '+%Y-%m-%d'))"
  echo
  echo "Dry run on the CPU: $DRY. $(grep -m1 '^GPU ' "$LOG" || echo 'GPU: none')."
  echo
  echo "| step | status | s |"
  echo "|---|---|---|"
  printf '%s\n' "${TABLE[@]}"
  for file in frame_gpu.md syncs_gpu.md gpu_half.md postprocess_cuda.md tensorrt_gpu.md; do
    if [ -f "$RESULTS/$file" ] && [ "$RESULTS/$file" -nt "$STAMP" ]; then
      echo; echo "---"; echo; echo "<!-- $file -->"; cat "$RESULTS/$file"; cp "$RESULTS/$file" "$OUT/"
    fi
  done
} >"$SUMMARY"
log "== session: $((SECONDS - START))s; results in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
printf '%s\n' "${TABLE[@]}"
rm -f "$STAMP"
grep -q 'FAILED\|TIMEOUT' "$SUMMARY" && exit 1
exit 0
