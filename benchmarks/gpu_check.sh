#!/usr/bin/env bash
# The GPU check: one run on a fresh GPU machine, under ten minutes, ending in one table.
#
#   bash benchmarks/gpu_check.sh [OUT]          # OUT: logs, JSON and table.md (default: gpu-check/)
#
# 1. install (a virtualenv in .venv-gpu, unless PYTHON names an interpreter that has dmcondense);
# 2. the CUDA tests (tests/test_cuda.py: a DM step and an evaluation step free of host
#    synchronisation, a shard end to end through Ray on the GPU, a resume in deterministic mode);
# 3. `dmcondense bench --device cuda` at 3x32x32, 10 and 50 images per class: what a GPU config
#    runs (TF32, one pass, compiled) against the per-class reference, with bf16, compile off,
#    CUDA graphs, TF32 off and deterministic mode as variants;
# 4. the evaluation benchmark on CUDA (vmap against one network at a time);
# 5. each recipe's iteration at CIFAR-10's shape (benchmarks/recipe_costs.py), and so the hours of
#    its paper's 20,000 iterations on this GPU (the configs as shipped; CIFAR-10 itself cannot
#    reach a machine without a network);
# 6. `dmcondense run configs/digits.yaml` on one GPU, shortened.
# Each part's status goes into the table; a failing part does not stop the others.
# GPU_CHECK_DEVICE=cpu runs the same parts, tiny, on the CPU (the suite checks the script so).
# With CIFAR-10 on the machine, benchmarks/paper_protocol.sh runs the papers' own protocol next (hours).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-check}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
mkdir -p "$OUT"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 PYTHONUNBUFFERED=1
if [ -z "${PYTHON:-}" ]; then
  [ -x .venv-gpu/bin/python ] || python3 -m venv .venv-gpu
  .venv-gpu/bin/pip install -q -e ".[test]" > "$OUT/install.log" 2>&1; echo $? > "$OUT/install.rc"
  PYTHON=.venv-gpu/bin/python
fi
part() {  # part NAME SECONDS COMMAND...: run with a time limit, keep its output and status
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; echo $? > "$OUT/$name.rc"
  echo $((SECONDS - start)) > "$OUT/$name.seconds"
  echo "gpu check: $name done ($(cat "$OUT/$name.rc")) in $((SECONDS - start)) s" >&2
}
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt"
"$PYTHON" -c "import torch; print(torch.__version__, torch.version.cuda)" > "$OUT/torch.txt" 2>&1
if [ "$DEVICE" = cuda ]; then
  SIZE=(--shape 3,32,32 --iterations 10 --warmup 3); EPOCHS=20; IT=200; RECIPE_SIZE=(--iterations 10 --warmup 3)
  part cuda-tests 240 "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py
else
  SIZE=(--shape 1,8,8 --classes 2 --batch-real 8 --model ConvNetW32 --iterations 1 --warmup 1); EPOCHS=1; IT=4
  RECIPE_SIZE=(--shape 1,8,8 --classes 2 --batch-real 8 --ipc 2 --model ConvNetW32 --iterations 1 --warmup 1)
fi
for ipc in 10 50; do
  part "bench-ipc$ipc" 150 "$PYTHON" -m orchestrator.cli bench --device "$DEVICE" "${SIZE[@]}" --ipc "$ipc" \
    --variants "bf16=on,compile=off,cuda_graphs=on,tf32=off,deterministic=on" --json
done
part eval 120 "$PYTHON" benchmarks/bench_eval.py --device "$DEVICE" --models 5 --ipc 10 --epochs "$EPOCHS" --repeats 1
part recipes 150 "$PYTHON" benchmarks/recipe_costs.py --device "$DEVICE" "${RECIPE_SIZE[@]}" --json
GPUS=1; [ "$DEVICE" = cuda ] || GPUS=0
part run 240 "$PYTHON" -m orchestrator.cli run configs/digits.yaml --out "$OUT/run" \
  --set resources.gpus_per_shard=$GPUS --set "condense.iterations=$IT" --set condense.checkpoint_every=0 \
  --set evaluate.num_models=2 --set "evaluate.epochs=$EPOCHS"
"$PYTHON" benchmarks/gpu_check_table.py "$OUT" | tee "$OUT/table.md"
