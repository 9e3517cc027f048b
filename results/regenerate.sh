#!/usr/bin/env bash
# Regenerates every committed results folder from the datasets in ../shared/datasets, with the
# bundled all-MiniLM-L6-v2 (embeddings are cached: the first run embeds both corpora, ~10 min on
# 2 cores). Run from the repository root: `bash results/regenerate.sh`. Each command's printed
# table is the table.txt of its folder.
set -euo pipefail
cd "$(dirname "$0")/.."
export VESPA_QUANT_DATA="${VESPA_QUANT_DATA:-../shared/datasets}"
MODEL=all-MiniLM-L6-v2

for DATASET in scifact nfcorpus; do
    # every method at three Matryoshka dims (the research brief's rows)
    vespa-quant evaluate --dataset "$DATASET" --model "$MODEL" --dims 384,256,128 \
        --output "results/${DATASET}_${MODEL}"
    # published quantizers as rows of the same table (issue 11), at the native dim
    vespa-quant evaluate --dataset "$DATASET" --model "$MODEL" --dims 384 --peers faiss \
        --output "results/peers_${DATASET}_${MODEL}"
    # the two-phase search the Vespa profiles run: Hamming top-k1, rescored by the method
    # (a two-phase search returns at most k1 hits: at k1 = 50, recall@100 is over 50 hits)
    for K1 in 50 100 200; do
        vespa-quant evaluate --dataset "$DATASET" --model "$MODEL" --dims 384 --k1 "$K1" \
            --hits $(( K1 < 100 ? K1 : 100 )) --output "results/two_phase_${DATASET}_${MODEL}_k1_${K1}"
    done
done

vespa-quant analyze --dataset scifact --model "$MODEL" --dims 384,256,128 \
    --output "results/analysis_scifact_${MODEL}"
vespa-quant drift --dataset scifact --model "$MODEL" --calibration-fraction 0.01,0.05,0.1,0.25 \
    --order random --seed 0 --output "results/drift_scifact_${MODEL}"
vespa-quant report "results/peers_scifact_${MODEL}" "results/peers_nfcorpus_${MODEL}" \
    --output results/report
