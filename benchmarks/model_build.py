"""Times building a model with the two key sources side by side, each build in a fresh process (compilation cache
off): `ParamKeys` (make_jax/models/keys.py, what `create_model` uses) against flax's `nnx.Rngs`, which gives the
same keys.

    python benchmarks/model_build.py --model ViT-B-16 --modes abstract --repeats 3
    python benchmarks/model_build.py --model tiny --modes abstract,eager --repeats 2

`abstract` is `nnx.eval_shape` of the constructor (what `abstract_model` does: the restore target of
`make_jax.load` and the converters); `eager` builds and initialises the model op by op (`create_model`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
import jax
from flax import nnx
from make_jax.models import CLIP, get_model_config
from make_jax.models.keys import ParamKeys
cfg = get_model_config({model!r})
keys = (lambda: nnx.Rngs(params=0)) if {source!r} == "nnx.Rngs" else (lambda: ParamKeys(0))
t0 = time.perf_counter()
if {mode!r} == "abstract":
    nnx.eval_shape(lambda: CLIP(cfg, rngs=keys()))
else:
    jax.block_until_ready(jax.tree.leaves(nnx.state(CLIP(cfg, rngs=keys()))))
print(json.dumps(time.perf_counter() - t0))
"""


def build_seconds(model: str, source: str, mode: str) -> float:
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"), JAX_ENABLE_COMPILATION_CACHE="false")
    code = CHILD.format(root=ROOT, model=model, source=source, mode=mode)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"model_build.py: the {source} {mode} build of {model} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--modes", default="abstract", help="comma-separated: abstract, eager")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"# {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print("| model | mode | key source | seconds (each run) | median |")
    print("|---|---|---|---|---|")
    for mode in args.modes.split(","):
        runs = {"ParamKeys": [], "nnx.Rngs": []}
        for _ in range(args.repeats):  # alternated, so that a change in the machine's load hits both
            for source in runs:
                runs[source].append(build_seconds(args.model, source, mode))
        for source, secs in runs.items():
            median = statistics.median(secs)
            print(f"| {args.model} | {mode} | {source} | {', '.join(f'{s:.2f}' for s in secs)} | {median:.2f} |")


if __name__ == "__main__":
    main()
