#!/usr/bin/env bash
# The papers' own protocol on CIFAR-10 at 10 images per class, on one GPU machine that holds
# CIFAR-10: DM and every recipe from its config as shipped (20,000 iterations; 20 networks x 1,000
# epochs; DANCE and NCFM on the configs' pool of 64 ConvNets x 20 epochs with augmentation), ending
# in one table of each set against its paper (benchmarks/paper_protocol_table.py).
#
#   bash benchmarks/paper_protocol.sh CIFAR10_ROOT [OUT]    # OUT: pool, runs, logs, table.md (default: paper-protocol/)
#
# GPU hours: the GPU check's recipes part (benchmarks/gpu_check.sh) gives each recipe's 20,000
# iterations on that GPU; the pool and the evaluations come on top. Run again after an interruption:
# the pool keeps its finished networks and each run resumes (`dmcondense resume`), so only what is
# missing is computed. Only DM's run scores the random and herding baselines (Table 1's).
# PAPER_PROTOCOL_TINY=1 runs the same steps on the offline digits, tiny, on the CPU (the suite
# checks the script so); CIFAR10_ROOT is not read then.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 PYTHONUNBUFFERED=1
if [ "${PAPER_PROTOCOL_TINY:-0}" = 1 ]; then
  OUT=${2:-${1:-paper-protocol}}
  DATA=(--set dataset.name=digits --set dataset.root=null --set dataset.download=false
        --set resources.gpus_per_shard=0 --set evaluate.gpus=false --set condense.iterations=2
        --set condense.checkpoint_every=0 --set evaluate.num_models=1 --set evaluate.epochs=1
        --set pool.networks=1 --set pool.epochs=1 --set pool.states_every=1)
else
  [ $# -ge 1 ] && [ -d "$1" ] || { echo "usage: bash benchmarks/paper_protocol.sh CIFAR10_ROOT [OUT]: CIFAR-10 in torchvision's layout (../shared/data/cifar10/fetch.sh builds it)" >&2; exit 2; }
  OUT=${2:-paper-protocol}
  DATA=(--set "dataset.root=$1" --set dataset.download=false)
fi
mkdir -p "$OUT"
POOL=(--set "pool.uri=$OUT/pools")
status=0
step() {  # step NAME COMMAND...: run, keep its output; a failed step does not stop the others
  echo "paper protocol: $1 ..." >&2
  "${@:2}" > "$OUT/$1.log" 2>&1
  local rc=$?
  [ $rc = 0 ] || { status=1; echo "paper protocol: $1 failed (rc $rc), see $OUT/$1.log" >&2; }
}
step pool "$PYTHON" -m orchestrator.cli pool configs/cifar10-ipc10-dance.yaml "${DATA[@]}" "${POOL[@]}"
for recipe in dm m3d idm dance ncfm; do
  config=configs/cifar10-ipc10-$recipe.yaml; baselines=(--set "evaluate.baselines=[]")
  [ "$recipe" = dm ] && { config=configs/cifar10-ipc10.yaml; baselines=(); }
  if [ -f "$OUT/$recipe/run.json" ]; then
    step "$recipe" "$PYTHON" -m orchestrator.cli resume "$OUT/$recipe"
  else
    step "$recipe" "$PYTHON" -m orchestrator.cli run "$config" "${DATA[@]}" "${POOL[@]}" "${baselines[@]}" --out "$OUT/$recipe"
  fi
done
"$PYTHON" benchmarks/paper_protocol_table.py "$OUT" | tee "$OUT/table.md"
exit $status
