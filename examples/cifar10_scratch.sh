#!/usr/bin/env bash
# Recipe 2: CIFAR-10 from scratch (kuangliu/pytorch-cifar, d2l.ai's Kaggle CIFAR-10 chapter).
#
# The CIFAR ResNet-18 (3x3 stem, no max-pool, 32 px), SGD lr 0.1 momentum 0.9 weight decay 5e-4 on
# a cosine schedule, random crops of the 4-px-padded image plus flips, and per-channel mean/std
# computed from the training images. First on class folders (train/ + labeled test/), then on the
# Kaggle layout (trainLabels.csv beside train_tiny/), ending with an id,label submission.
#
#   bash examples/cifar10_scratch.sh ../shared/datasets runs/cifar10
#
# EPOCHS (default 10) sets both runs' length (the tutorial trains 200); GRAFT_ARGS adds options to
# every graft train (the tests: --workers 0).
set -euo pipefail
DATASETS=${1:?usage: cifar10_scratch.sh DATASETS_DIR [OUT]}
OUT=${2:-runs/cifar10}
EPOCHS=${EPOCHS:-10}
RECIPE=(--arch cifar_resnet18 --mode scratch --optimizer sgd --lr 0.1 --momentum 0.9 --weight-decay 5e-4
        --schedule cosine --epochs "$EPOCHS" --batch-size 128 --crop-padding 4 --rotate 0 --jitter 0
        --normalize data --no-report --overwrite ${GRAFT_ARGS:-})

# 1000 training images in 10 class folders: 800 train / 200 val, and the 200 test images.
graft train "$DATASETS/cifar10_folders" --out "$OUT/folders" "${RECIPE[@]}"
graft evaluate "$OUT/folders" "$DATASETS/cifar10_folders" --split test

# Kaggle's layout: ids in trainLabels.csv, test images in test_tiny/; the submission is id,label.
graft train "$DATASETS/cifar10_tiny" --labels "$DATASETS/cifar10_tiny/trainLabels.csv" \
    --out "$OUT/kaggle" "${RECIPE[@]}"
graft predict "$OUT/kaggle" "$DATASETS/cifar10_tiny/test_tiny" \
    --submission "$OUT/submission.csv" --submission-format label
