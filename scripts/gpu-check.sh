#!/usr/bin/env bash
# One command on a machine with an NVIDIA GPU, Docker with the NVIDIA runtime, and LASAN installed (make install):
#
#   scripts/gpu-check.sh CHECKPOINT [--fp16] [--release 24.10] [--work DIR]
#
# 1. lasan build --profile gpu --trtexec      tensorrt_plan configs + model.onnx + build_engines.sh
# 2. NGC TensorRT container: trtexec           model.onnx -> model.plan (dynamic batch 1/8/16), on this GPU
# 3. NGC Triton container: tritonserver        serves the repository (python backend for pre/post-processing)
# 4. parity                                    served vs in-process checkpoint (1e-3 fp32, 3e-2 fp16)
# 5. NGC Triton SDK container: perf_analyzer   ensemble at concurrency 1, 8, 32
# 6. a table of the above
#
# Nothing here has run on a GPU yet (no GPU was available while it was written): TensorRT is UNVERIFIED
# until this script prints its table. Everything it generates (commands, configs, shapes, flags) is
# tested on CPU by tests/build/test_tensorrt.py.
set -euo pipefail

CHECKPOINT="${1:?usage: scripts/gpu-check.sh CHECKPOINT [--fp16] [--release 24.10] [--work DIR]}"; shift
FP16=""; RELEASE="24.10"; WORK="work/gpu-check"
while [ $# -gt 0 ]; do
  case "$1" in
    --fp16) FP16="--fp16" ;;
    --release) RELEASE="$2"; shift ;;
    --work) WORK="$2"; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
LASAN="${LASAN:-.venv/bin/lasan}"; PY="${PY:-.venv/bin/python}"
ATOL=1e-3; [ -n "$FP16" ] && ATOL=3e-2
command -v nvidia-smi >/dev/null || { echo "no nvidia-smi: this script needs an NVIDIA GPU" >&2; exit 1; }
command -v docker >/dev/null || { echo "no docker: this script runs the NGC TensorRT and Triton containers" >&2; exit 1; }
mkdir -p "$WORK"; WORK="$(cd "$WORK" && pwd)"; REPO="$WORK/repo"
GPU="$(nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader | head -1)"

echo "== 1. repository (tensorrt_plan configs, ONNX parts)"
"$LASAN" build "$CHECKPOINT" --profile gpu --trtexec $FP16 --out "$REPO"

echo "== 2. TensorRT engines with trtexec (nvcr.io/nvidia/tensorrt:${RELEASE}-py3)"
start=$(date +%s)
docker run --rm --gpus all -v "$REPO:$REPO" -w "$REPO" "nvcr.io/nvidia/tensorrt:${RELEASE}-py3" sh build_engines.sh \
  > "$WORK/trtexec.log" 2>&1 || { tail -30 "$WORK/trtexec.log"; exit 1; }
ENGINE_S=$(( $(date +%s) - start ))
ls -l "$REPO"/encoder/1/model.plan "$REPO"/fusion/1/model.plan

echo "== 3. Triton (nvcr.io/nvidia/tritonserver:${RELEASE}-py3)"
docker rm -f lasan-gpu-check >/dev/null 2>&1 || true
docker run -d --name lasan-gpu-check --gpus all --shm-size 1g -p 18000:8000 -p 18001:8001 -p 18002:8002 \
  -v "$REPO:/models" "nvcr.io/nvidia/tritonserver:${RELEASE}-py3" \
  tritonserver --model-repository=/models --strict-readiness=true > /dev/null
trap 'docker logs lasan-gpu-check > "$WORK/tritonserver.log" 2>&1 || true; docker rm -f lasan-gpu-check >/dev/null 2>&1 || true' EXIT
for _ in $(seq 1 120); do
  curl -sf localhost:18000/v2/models/lasan/ready >/dev/null && break
  sleep 2
done
curl -sf localhost:18000/v2/models/lasan/ready >/dev/null || { docker logs lasan-gpu-check | tail -40; exit 1; }

echo "== 4. parity against the checkpoint (atol $ATOL)"
PARITY="$("$PY" -m lasan.build.tensorrt parity localhost:18001 "$CHECKPOINT" --atol "$ATOL")" || { echo "$PARITY"; exit 1; }
echo "$PARITY"

echo "== 5. perf_analyzer (nvcr.io/nvidia/tritonserver:${RELEASE}-py3-sdk)"
"$PY" - "$WORK/input-lasan.json" <<'PYEOF'
import json, sys
from lasan.benchmarks.triton import real_ecg
from lasan.tensor_names import INPUT_ECG, INPUT_SAMPLING_RATE
ecg, fs, _ = real_ecg()
json.dump({"data": [{INPUT_ECG: {"content": ecg.ravel().tolist(), "shape": list(ecg.shape)}, INPUT_SAMPLING_RATE: [fs]}]},
          open(sys.argv[1], "w"))
PYEOF
ROWS=""
for c in 1 8 32; do
  docker run --rm --net host -v "$WORK:$WORK" "nvcr.io/nvidia/tritonserver:${RELEASE}-py3-sdk" \
    perf_analyzer -m lasan -u localhost:18001 -i grpc -b 1 --input-data "$WORK/input-lasan.json" \
    --concurrency-range "$c:$c" --measurement-interval 5000 -f "$WORK/perf-c$c.csv" > "$WORK/perf-c$c.log" 2>&1 \
    || { tail -20 "$WORK/perf-c$c.log"; exit 1; }
  ROWS="$ROWS$("$PY" -c 'import sys; from pathlib import Path; from lasan.benchmarks.triton import parse_perf_csv
r = parse_perf_csv(Path(sys.argv[1]), "lasan")[0]
print(f"| ensemble, concurrency {r.concurrency} | {r.throughput:.1f} ECG/s | p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms |")' "$WORK/perf-c$c.csv")"$'\n'
done

echo "== 6. result"
cat <<TABLE
| what | value | note |
|---|---|---|
| GPU | $GPU | Triton/TensorRT containers ${RELEASE} |
| engines | built in ${ENGINE_S} s | precision: ${FP16:-fp32} (trtexec log: $WORK/trtexec.log) |
| parity | ${PARITY#parity ok: } | served vs checkpoint |
${ROWS}
TABLE
