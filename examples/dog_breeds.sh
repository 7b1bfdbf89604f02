#!/usr/bin/env bash
# Recipe 3: dog breeds, Kaggle style (d2l.ai's "Dog Breed Identification" chapter).
#
# Reorganise labels.csv + train/ into train/, valid/, train_valid/ and test/ folders, train a
# two-layer head (features -> 256 -> ReLU -> classes) on the frozen ImageNet body with SGD (lr 0.03,
# weight decay 1e-4, learning rate x0.1 every 10 epochs), check it on valid/, retrain the same way
# on train + valid, and write the per-class probability submission in the sample's column order.
#
#   bash examples/dog_breeds.sh ../shared/datasets/dog_tiny runs/dog
#
# EPOCHS (default 20) for both trainings; GRAFT_ARGS adds options to every graft train (the tests:
# --input-size 64).
set -euo pipefail
DATA=${1:?usage: dog_breeds.sh DOG_DATA_DIR [OUT]}
OUT=${2:-runs/dog}
EPOCHS=${EPOCHS:-20}
RECIPE=(--mode features --head 256 --head-dropout 0 --optimizer sgd --lr 0.03 --weight-decay 1e-4
        --schedule step --step-size 10 --gamma 0.1 --epochs "$EPOCHS" --no-report --overwrite ${GRAFT_ARGS:-})

graft organize "$DATA" --labels "$DATA/labels.csv" --out "$OUT/data" --valid-split 0.1 --overwrite
graft train "$OUT/data" --out "$OUT/valid-run" "${RECIPE[@]}"
graft train "$OUT/data/train_valid" --valid-split 0 --out "$OUT/final" "${RECIPE[@]}"
graft predict "$OUT/final" "$OUT/data/test" --submission "$OUT/submission.csv" \
    --submission-format probs --sample-submission "$DATA/sample_submission.csv"
