# On the GPU machine (no network): install the carried wheels of benchmarks/wheelhouse.sh, then run the suite.
cd "$(dirname "$0")/.." && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} || exit 1
PYTHONUNBUFFERED=1 exec python3 benchmarks/gpu_suite.py "$@"
