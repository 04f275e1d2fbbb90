#!/usr/bin/env bash
# The figures of docs/results.md, from nothing, on this machine (a benchmark, not a test: about
# 45 minutes on 2 idle CPU cores with VARIANTS=all, most of it Table III).  Usage:
#
#     bash scripts/results.sh OUT [VARIANTS]
#
# OUT receives four paper-scale synthetic cohorts (seeds 0-3), Table III of the seed-0
# cohort with --preset cpu (OUT/table3/table_iii.md), a model trained on all of seed 0 with
# the temperature of its held-out folds, the end-to-end report of that model labelling the
# seed-1 cohort with --mentions auto (OUT/end_to_end.json), the same the other way round
# (Table III's three main rows on the seed-1 cohort, OUT/table3_seed1; a model trained on it
# labelling the seed-0 cohort, OUT/end_to_end_seed0.json), two more cohorts (seeds 2 and 3)
# labelled by the seed-0 model (OUT/end_to_end_seed2.json, ..._seed3.json), the detector's
# evaluation on all four (OUT/detect_seed*.json) and where each model's heat maps point on the
# cohort it did not see (OUT/localisation_seed1.json, ..._seed0.json).  VARIANTS (default:
# proposed,voice_only,image_only) is the --variant list of Table III; 'all' runs every row
# that can run here.  Every step resumes where it stopped when the command is run again.
set -euo pipefail
out=${1:?usage: bash scripts/results.sh OUT [VARIANTS]}
variants=${2:-proposed,voice_only,image_only}
mkdir -p "$out"
run() { echo "+ $*" >&2; "$@"; }

for seed in 0 1 2 3; do
    if [ ! -f "$out/paper$seed/patient12/mentions.csv" ]; then
        run eusvoicelabel synth "$out/paper$seed" --counts paper --seed "$seed" --force
    fi
done
# Table III, leave-one-patient-out (finished folds are reused on a rerun).
run eusvoicelabel evaluate "$out/paper0" --variant "$variants" --preset cpu --out "$out/table3" \
    --workers 2
# One model on every seed-0 patient, calibrated by the proposed row's held-out folds.
run eusvoicelabel train "$out/paper0" --out "$out/model_cpu.pt" --preset cpu \
    --temperature-from "$out/table3/proposed"
# End to end on patients the model never saw: detect, label, score against mentions.csv.
run python3 -m EUSVoiceLabelLib.labelling.endtoend "$out/paper1" --model "$out/model_cpu.pt" \
    --out "$out/end_to_end.json"
# The other way round: seed 1 for training, seed 0 labelled (no setting is chosen on either).
run eusvoicelabel evaluate "$out/paper1" --variant proposed,voice_only,image_only --preset cpu \
    --out "$out/table3_seed1" --workers 2
run eusvoicelabel train "$out/paper1" --out "$out/model_cpu_seed1.pt" --preset cpu \
    --temperature-from "$out/table3_seed1/proposed"
run python3 -m EUSVoiceLabelLib.labelling.endtoend "$out/paper0" \
    --model "$out/model_cpu_seed1.pt" --out "$out/end_to_end_seed0.json"
# Two more draws (seeds 2 and 3), labelled by the seed-0 model: no setting is chosen on them.
for seed in 2 3; do
    run python3 -m EUSVoiceLabelLib.labelling.endtoend "$out/paper$seed" \
        --model "$out/model_cpu.pt" --out "$out/end_to_end_seed$seed.json"
done
for seed in 0 1 2 3; do
    run eusvoicelabel detect "$out/paper$seed" --evaluate --out "$out/detect_seed$seed.json"
done
# Where the heat maps point, on patients each model never saw (docs/evidence.md).
run python3 -m EUSVoiceLabelLib.labelling.localisation "$out/paper1" --model "$out/model_cpu.pt" \
    --out "$out/localisation_seed1.json"
run python3 -m EUSVoiceLabelLib.labelling.localisation "$out/paper0" \
    --model "$out/model_cpu_seed1.pt" --out "$out/localisation_seed0.json"
echo "done: $out/table3/table_iii.md, $out/table3_seed1/table_iii.md, $out/end_to_end.json," \
    "$out/end_to_end_seed{0,2,3}.json, $out/detect_seed{0,1,2,3}.json," \
    "$out/localisation_seed{0,1}.json"
