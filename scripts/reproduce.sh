#!/usr/bin/env bash
# Reproduce the Latent Guard row of Table 1 end to end, on a GPU machine with internet access:
#   1. python prepare.py   - downloads CoPro v1.0 and CLIP ViT-L/14, builds the embedding store;
#   2. python main.py      - trains one model per seed with the paper's schedule (1,001 epochs),
#      keeping the final weights (model_parameters.pth, as released) and the best on validation (best.pth);
#   3. python test.py      - evaluates both of each seed (ID/OOD x explicit/synonym/adversarial);
#   4. scripts/aggregate_seeds.py - mean +- std over seeds beside the published numbers: final weights
#      in $RUNS/reproduce/summary.md (.json), best-on-validation in $RUNS/reproduce_best/.
#
# Re-running resumes: the store build continues where it stopped, an interrupted training run
# continues from its resume.pt, and seeds already evaluated are skipped.
#
# Settings (environment variables):
#   SEEDS="0 1 2"     seeds to train                 EPOCHS=1001   epochs per seed
#   RUNS=runs         where run directories go       PYTHON=python interpreter
#   DEVICE, DATASET, ENCODER, STORE_DIR, CONFIG: passed as --device/--dataset/--encoder/--store-dir/--config
#   to every step when set (defaults: latentguard/default.yaml).
# Example: SEEDS="0 1 2 3 4" DEVICE=cuda:1 bash scripts/reproduce.sh
set -euo pipefail
if [[ $# -gt 0 ]]; then
  case "$1" in
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: reproduce.sh takes no arguments (got '$1'); settings are environment variables, see --help" >&2
       exit 2 ;;
  esac
fi
cd "$(dirname "$0")/.."

SEEDS="${SEEDS:-0 1 2}"
EPOCHS="${EPOCHS:-1001}"
RUNS="${RUNS:-runs}"
PYTHON="${PYTHON:-python}"

common=()
[[ -n "${CONFIG:-}" ]] && common+=(--config "$CONFIG")
[[ -n "${DATASET:-}" ]] && common+=(--dataset "$DATASET")
[[ -n "${ENCODER:-}" ]] && common+=(--encoder "$ENCODER")
[[ -n "${STORE_DIR:-}" ]] && common+=(--store-dir "$STORE_DIR")
[[ -n "${DEVICE:-}" ]] && common+=(--device "$DEVICE")

step() { printf '\n=== %s ===\n' "$*"; }

step "1/4 embedding store (prepare.py)"
"$PYTHON" prepare.py ${common[@]+"${common[@]}"}

runs=()
for seed in $SEEDS; do
  out="$RUNS/seed$seed"
  runs+=("$out")
  if [[ -f "$out/eval/results.json" && -f "$out/eval_best/results.json" ]]; then
    step "seed $seed: already trained and evaluated ($out/eval/results.json), skipping"
    continue
  fi
  step "2/4 seed $seed: training $EPOCHS epochs -> $out"
  # Re-running the same command resumes from $out/resume.pt; a finished run returns at once.
  "$PYTHON" main.py ${common[@]+"${common[@]}"} --seed "$seed" --epochs "$EPOCHS" --output-dir "$out" --keep-best
  step "3/4 seed $seed: evaluating $out/model_parameters.pth (final) and $out/best.pth (best on validation)"
  "$PYTHON" test.py ${common[@]+"${common[@]}"} --checkpoint "$out/model_parameters.pth" --output-dir "$out/eval"
  "$PYTHON" test.py ${common[@]+"${common[@]}"} --checkpoint "$out/best.pth" --output-dir "$out/eval_best"
done

step "4/4 aggregate over seeds: $SEEDS (final weights, then best on validation)"
"$PYTHON" scripts/aggregate_seeds.py "${runs[@]}" --output-dir "$RUNS/reproduce"
best_runs=()
for out in "${runs[@]}"; do best_runs+=("$out/eval_best"); done
"$PYTHON" scripts/aggregate_seeds.py "${best_runs[@]}" --output-dir "$RUNS/reproduce_best"
