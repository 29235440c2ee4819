#!/usr/bin/env bash
# (Every GPU check in one device command, data carried: benchmarks/gpu_session.sh, docs/gpu_session.md.)
# GPU check for the robot-side work (issue 15), for a session with an NVIDIA GPU; < 5 min after `make venv`.
# 1. The node's measured ms per block and block cap on CUDA (torch backend; TensorRT when importable), and
# 2. the rate-true replay of the Ouster bag at 10 Hz for 30 s per configuration (frames in/out/dropped, latency, RSS).
# Results: benchmarks/results/replay_gpu.md (and replay_tensorrt.md when TensorRT is importable).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-25} ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
$PY -c 'import torch; assert torch.cuda.is_available(), "no CUDA device visible to torch"; print(torch.cuda.get_device_name(0))'
$PY benchmarks/bench_replay.py --duration 30 --budgets 100 1000 --param backend:=torch --param device:=cuda \
    --results benchmarks/results/replay_gpu.md
if $PY -c 'import tensorrt' 2>/dev/null; then
  $PY benchmarks/bench_replay.py --duration 30 --budgets 100 1000 --param backend:=tensorrt --param device:=cuda \
      --results benchmarks/results/replay_tensorrt.md
else
  echo "tensorrt not importable: TensorRT replay not measured"
fi
