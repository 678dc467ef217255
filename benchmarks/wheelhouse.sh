#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with the cp312 manylinux wheels that the GPU machine (Python 3.12, no network, no pip
# index) lacks for benchmarks/gpu_suite.py: the imports of make_jax, launch.py and the suite that its image does
# not hold (grain, array-record, tensorflow-datasets, ml-collections, ftfy, tensorboardX, open_clip_torch) and
# their own missing requirements. Run it where pip reaches PyPI, then carry .whl to the GPU machine
# (BENCHMARKS.md, "The GPU suite"). Versions are those of requirements.txt where it pins them.
# Ends with benchmarks/wheel_check.py: every requirement covered, one version each, under 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=.whl
WHEELS=(
  grain==0.2.18 array-record==0.8.6 tensorflow-datasets==4.9.10 ml-collections==1.1.0 ftfy==6.3.1
  tensorboardX==2.6.5 open-clip-torch==3.3.0
  # their requirements missing from the GPU image
  wcwidth==0.9.4 portpicker==1.6.0 dm-tree==0.1.10 immutabledict==4.3.1 simple-parsing==0.1.9
  docstring-parser==0.18.0 tensorflow-metadata==1.21.0 googleapis-common-protos==1.76.0 termcolor==3.3.0
  toml==0.10.2
)
mkdir -p "$DEST"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$DEST" "${WHEELS[@]}"
# promise (a tensorflow-datasets requirement) is published as a source archive only: build its pure-Python wheel
ls "$DEST"/promise-2.3-*.whl >/dev/null 2>&1 || "$PY" -m pip wheel -q --no-deps -w "$DEST" promise==2.3
"$PY" benchmarks/wheel_check.py "$DEST"
