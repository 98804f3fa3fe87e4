#!/usr/bin/env bash
# Regenerate the figures/ gallery from the example sweeps:
#   scripts/make_figures.sh [--workers N] [SWEEP.yaml ...]     (default: every examples sweep)
# Each sweep runs into runs/gallery/<name>/ (resumable: a rerun only simulates what is missing);
# its PNGs are copied to figures/<name>__<plot>.png. A sweep that needs a policy not registered
# yet is skipped with a note.
set -euo pipefail
cd "$(dirname "$0")/.."
workers=$(nproc)
if [[ "${1:-}" == "--workers" ]]; then workers=$2; shift 2; fi
sweeps=("$@")
if [[ ${#sweeps[@]} -eq 0 ]]; then
  sweeps=(examples/pareto_h200_llama8b.yaml examples/sweep_*.yaml)
fi
mkdir -p figures
for sweep in "${sweeps[@]}"; do
  missing=$(python -c "
import sys
from servesim.policies import REGISTRY
from servesim.sweep import required_policies
print(' '.join(p for p in required_policies(sys.argv[1]) if p not in REGISTRY))" "$sweep")
  if [[ -n "$missing" ]]; then
    echo "skipping $sweep: policy not registered yet: $missing"
    continue
  fi
  name=$(python -c "import sys; from servesim.sweep import load_sweep; print(load_sweep(sys.argv[1]).name)" "$sweep")
  out=runs/gallery/$name
  servesim sweep "$sweep" --out "$out" --workers "$workers"
  for png in "$out"/figures/*.png; do
    cp "$png" "figures/${name}__$(basename "$png")"
  done
done
ls figures
