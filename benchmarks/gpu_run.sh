#!/bin/bash
# Issue 23's accelerator targets in one device run (recipe: ../shared/notes/gpu.md).
#
# Once, on the development machine, in the repository root (the device has no package index):
#   echo /.whl/ >> .git/info/exclude
#   pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       --no-deps -d .whl keras namex optree google-crc32c
# Then one device call: command "bash benchmarks/gpu_run.sh", carry [".whl"], timeout_s 540.
# Prints, for ResNet-50 224x224, batch 128, 4096 samples: JAX and Keras-on-torch, one pass
# and the whole recalibrate against model.predict, images / s, and PyTorch's own update_bn
# on torchvision's ResNet-50 (the anchor). Targets: JAX pass <= 1.15x predict and >= 6,400
# images / s; torch <= 1.1x its predict.
set -u
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
nvidia-smi -L
B="python3 benchmarks/recalibrate_vs_predict.py --model resnet50 --image-size 224 --samples 4096 --batch-size 128"
KERAS_BACKEND=jax timeout 200 $B --pass-only --repeat 3
KERAS_BACKEND=jax timeout 150 $B --repeat 2
KERAS_BACKEND=torch timeout 150 $B --pass-only --repeat 2
