#!/usr/bin/env bash
# (Every GPU check in one device command, data carried: benchmarks/gpu_session.sh, docs/gpu_session.md.)
# The one device check of the batched post-processing (mean_shift_blocks, block_merging), < 5 min on an H200:
#   1. the CUDA variants of the mean-shift and merging tests (they skip without CUDA, so they only run here);
#   2. the real-frame benchmark on CUDA: batched frame path on the GPU vs the per-block references (numpy,
#      CPU) in the same run, written to benchmarks/results/postprocess_cuda.md (and to $OUT when set).
# Needs a Python with CUDA torch and the project installed (PY=...), and the frame cache made on a machine
# with the shared data: `python benchmarks/frame_blocks.py` writes cache/frame_blocks_*.npz (~10 MB per Ouster
# frame); carry `cache` to the device machine. Usage: PY=python bash benchmarks/gpu_postprocess.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
export PYTHONUNBUFFERED=1
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.__version__, torch.cuda.get_device_name())"
"$PY" -m pytest -q -p no:cacheprovider tests/test_meanshift.py tests/test_merging.py -k cuda -rs
"$PY" benchmarks/bench_postprocess.py --real-only --device cuda --frames ouster0,ouster1,office --repeats 5
if [ -n "${OUT:-}" ]; then cp benchmarks/results/postprocess_cuda.md "$OUT/"; fi
