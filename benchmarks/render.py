"""results.json of benchmarks/gpu_suite.py → the Markdown rows for BENCHMARKS.md (printed on stdout).

    python benchmarks/render.py OUT/results.json >> /tmp/rows.md     # then paste under "The GPU suite"
    python benchmarks/render.py FIRST/results.json SECOND/results.json  # a second call ran the skipped parts

Prints the device, date, command and versions, one table row per run (failed and skipped runs included, with
their error), the ratio of each jax step's images/s to the PyTorch peer's, and the issue #10 targets met or not.
"""

from __future__ import annotations

import json
import sys

TARGETS = "≥ 1,700 images/s (packed), ≤ 70 GB peak at batch 2048, ≥ 40 % MFU, ≥ 6× the PyTorch peer"


def _f(x, fmt: str, scale: float = 1.0) -> str:
    return "—" if x is None else format(x if scale == 1.0 else x * scale, fmt)


def render(res: dict) -> str:
    dev, runs = res["device"], res["runs"]
    peer = next((r for r in runs if r["name"] == "torch_peer" and not r["error"]), None)
    lines = [
        f"Device: {dev.get('device_kind', '?')} ({dev.get('nvidia_smi', 'no nvidia-smi')}); "
        f"{dev.get('cpus', '?')} CPUs; {dev.get('platform', '?')}",
        f"Date: {dev.get('date', '?')}. Command: `{dev.get('command', '?')}` "
        f"(suite wall time {_f(dev.get('suite_s'), '.0f')} s of a {_f(dev.get('budget_s'), '.0f')} s budget).",
        f"Versions: Python {dev.get('python', '?')}, jax {dev.get('jax', '?')}, torch {dev.get('torch', '?')} "
        f"(CUDA {dev.get('torch_cuda', '?')}).",
        f"Measured matmul ceiling: {_f(dev.get('matmul_tflops'), '.1f')} TFLOP/s ({dev.get('matmul_dtype', '?')}, "
        f"n = {dev.get('matmul_n', '?')}); datasheet {_f(dev.get('datasheet_tflops'), '.0f')} TFLOP/s.",
        "",
        "| run | framework | mode | model | batch | dtype | remat | images/s | step ms | TFLOP/s | MFU (sheet) "
        "| MFU (measured) | peak GiB | compile s | vs peer | error |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        ratio = "—"
        if peer and r["images_per_s"] and r["name"].startswith("jax_") and not r["error"]:
            ratio = f"{peer_ratio(r, peer):.2f}×"
        remat = r.get("remat")
        lines.append(" | ".join([
            f"| {r['name']}", r["framework"] or "—", r["mode"] or "—", r["model"] or "—", _f(r["batch"], "d"),
            r["dtype"] or "—", "—" if remat is None else str(remat), _f(r["images_per_s"], ",.1f"),
            _f(r["step_ms"], ",.1f"), _f(r.get("tflops"), ".3g"), _f(r["mfu"], ".1%"), _f(r.get("mfu_measured"), ".1%"),
            _f(r["peak_bytes"], ".1f", 1 / 2**30), _f(r["compile_s"], ".1f"), ratio,
            (r["error"] or "").replace("|", "/") + " |"]))
    extras = [f"- {r['name']}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                             for k, v in r.items() if k in EXTRA_KEYS and v is not None)
              for r in runs if any(r.get(k) is not None for k in EXTRA_KEYS)]
    if extras:
        lines += ["", *extras]
    lines += ["", f"Targets (issue #10): {TARGETS}.", *targets(runs, peer)]
    return "\n".join(lines) + "\n"


EXTRA_KEYS = ("gflop_per_image", "variants_compiled", "pack_ms", "xla_memory_estimate_bytes", "final_loss",
              "peer_model", "trace", "records", "workers", "prep_workers", "generate_images_per_s",
              "convert_images_per_s", "load_s", "images")


def peer_ratio(run: dict, peer: dict) -> float:
    """How many times the PyTorch peer's images/s a run gets."""
    return run["images_per_s"] / peer["images_per_s"]


def targets(runs: list, peer: dict | None) -> list[str]:
    ok = {r["name"]: r for r in runs if not r["error"]}
    packed, pipe = ok.get("jax_packed"), ok.get("input_pipeline")
    out = []
    if packed:
        out.append(f"- images/s (packed): {packed['images_per_s']:,.0f} — "
                   f"{'met' if packed['images_per_s'] >= 1700 else 'not met'}")
        if packed["mfu"] is not None:
            out.append(f"- MFU (packed, datasheet): {packed['mfu']:.1%} — {'met' if packed['mfu'] >= 0.40 else 'not met'}")
        if packed["peak_bytes"] is not None:
            out.append(f"- peak memory (packed): {packed['peak_bytes'] / 1e9:.1f} GB — "
                       f"{'met' if packed['peak_bytes'] <= 70e9 else 'not met'}")
        if peer:
            ratio = peer_ratio(packed, peer)
            out.append(f"- vs the PyTorch peer at batch {peer['batch']}: {ratio:.2f}× — "
                       f"{'met' if ratio >= 6 else 'not met'}")
        if pipe:
            out.append(f"- input pipeline {pipe['images_per_s']:,.0f} images/s vs step {packed['images_per_s']:,.0f} — "
                       f"{'faster' if pipe['images_per_s'] > packed['images_per_s'] else 'slower: the input bounds the step'}")
    return out or ["- no packed figure: targets not assessed"]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python benchmarks/render.py OUT/results.json [OUT2/results.json ...]", file=sys.stderr)
        return 2
    res = {"device": {}, "runs": []}
    for path in argv:  # a second call (--only the skipped parts) adds its runs; the first call's device wins
        try:
            with open(path) as f:
                part = json.load(f)
            res["device"] = {**part["device"], **res["device"]}
            res["runs"] += part["runs"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            print(f"render.py: {path}: not a gpu_suite results.json ({type(e).__name__}: {e})", file=sys.stderr)
            return 1
    ran = {r["name"] for r in res["runs"] if not (r["error"] or "").startswith("skipped")}
    res["runs"] = [r for r in res["runs"] if r["name"] not in ran or not (r["error"] or "").startswith("skipped")]
    try:
        text = render(res)
    except (KeyError, TypeError, ValueError) as e:
        print(f"render.py: {argv[0]}: a run lacks a field ({type(e).__name__}: {e})", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
