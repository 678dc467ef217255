"""`python -m make_jax.evaluate`: run one evaluation task, or several from a config file, and write JSON.

    python -m make_jax.evaluate --checkpoint ckpt/make --task zero_shot --csv PAD/test.csv --classes PAD \\
        --image-root PAD/images --out pad.json
    python -m make_jax.evaluate --checkpoint ckpt/make --task concepts --data-dir skincon --out skincon.json
    python -m make_jax.evaluate --checkpoint ckpt/make --task retrieval --csv skincap/skincap.csv \\
        --caption-column caption_zh_polish_en --out skincap.json
    python -m make_jax.evaluate --checkpoint ckpt/make --task infer --images lesion.jpg --classes PAD
    python -m make_jax.evaluate --checkpoint ckpt/make --config configs/eval_paper.py:/data/eval --out paper.json

See docs/evaluation.md for the layouts and the numbers to expect.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

from make_jax.atomic_io import check_writable
from make_jax.evaluate import registry, suite
from make_jax.evaluate.common import to_jsonable
from make_jax.evaluate.datasets import DatasetError

__all__ = ["build_parser", "load_config", "load_encoder", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m make_jax.evaluate", description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="tasks: zero_shot, concepts, retrieval, infer, linear_probe, embed, explain (see docs/evaluation.md)")
    m = p.add_argument_group("model")
    src = m.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="a make_jax checkpoint directory, an open_clip / Hugging Face CLIP "
                     "directory, hf-hub:ORG/NAME, or a registry name (make, dermlip-vit-b16, openai-vit-b16)")
    src.add_argument("--random-init", metavar="PRESET",
                     help="random weights of a model preset (tiny, small, ViT-B-16): pipeline checks and speed only")
    m.add_argument("--activation", choices=("quick_gelu", "gelu"), default=None,
                   help="override the activation of a --checkpoint that is converted on load (open_clip / HF dir, "
                        "hf-hub:, registry name) or of --random-init")
    m.add_argument("--seed", type=int, default=0, help="seed of --random-init")
    m.add_argument("--dtype", default=None, help="compute dtype override, e.g. bfloat16 (parameters stay float32)")
    m.add_argument("--batch-size", type=int, default=32, help="images per jitted encoder call (default 32)")
    m.add_argument("--text-batch-size", type=int, default=None, help="texts per call (default 4×batch size)")

    r = p.add_argument_group("run")
    what = r.add_mutually_exclusive_group(required=True)
    what.add_argument("--task", help="zero_shot | concepts | retrieval | infer | linear_probe | embed | explain")
    what.add_argument("--config", help="an eval config listing several sets: a file or a packaged name "
                                       "(eval_paper, eval_synthderm), optionally NAME:ARG")
    r.add_argument("--name", help="a label for this set in the results")
    r.add_argument("--out", help="write the results here as JSON")
    r.add_argument("--workers", type=int, default=None, help="image-decoding threads (default: CPU count, ≤16)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of skipping it")
    r.add_argument("--format", choices=("table", "json"), default="table", help="what to print (default: table)")

    d = p.add_argument_group("dataset options (by task)")
    d.add_argument("--csv", help="zero_shot: filename,label CSV; retrieval: filename,caption CSV; linear_probe: "
                                 "filename,label,split CSV; embed: CSV with a filename column")
    d.add_argument("--image-root", help="folder the CSV's filenames are relative to (default: the CSV's folder)")
    d.add_argument("--classes", help="zero_shot / infer: class list, a preset (PAD, F17K, SNU-134, SD-128) or a "
                                     "JSON / text file")
    d.add_argument("--templates", help="zero_shot / infer: templates JSON (default: the 8 of templates.json)")
    d.add_argument("--topk", type=int, nargs="+", default=None,
                   help="zero_shot: accuracies to report (default 1 5); infer: classes to show (default 5)")
    d.add_argument("--filename-column", default=None, help="zero_shot / retrieval: image column (default filename)")
    d.add_argument("--label-column", default=None, help="zero_shot: label column (default label)")
    d.add_argument("--save-predictions", action="store_true", help="zero_shot: per-image top-k in the JSON")
    d.add_argument("--predictions-csv", default=None,
                   help="zero_shot / linear_probe: write one row per image with every class's probability here")
    d.add_argument("--bootstrap", type=int, default=None,
                   help="zero_shot / linear_probe / concepts: bootstrap replicates for 95%% intervals (e.g. 1000)")
    d.add_argument("--bootstrap-seed", type=int, default=None, help="seed of --bootstrap (default 0)")
    d.add_argument("--data-dir", help="concepts: SkinCon / Derm7pt-layout directory")
    d.add_argument("--meta", default=None, help="concepts: label table inside --data-dir (default meta.csv)")
    d.add_argument("--image-dir", default=None, help="concepts: image folder inside --data-dir (default final_images)")
    d.add_argument("--concept-list", default=None,
                   help="concepts: concept_list.txt (default), another file, 'a,b,c', or 'all' for every column")
    d.add_argument("--concept-terms", default=None, help="concepts: synonym table JSON (default ConceptTerms.json)")
    d.add_argument("--concept-prompts", default=None, help="concepts: prompts JSON (default concept_prompts.json)")
    d.add_argument("--id-column", default=None, help="concepts: image-id column of meta.csv (default ImageID)")
    d.add_argument("--save-scores", action="store_true", help="concepts: per-image concept scores in the JSON")
    d.add_argument("--caption-column", default=None,
                   help="retrieval: caption column (default caption, else SkinCAP's caption_zh_polish_en)")
    d.add_argument("--ks", type=int, nargs="+", default=None, help="retrieval: recall cut-offs (default 1 5 10 50 100)")
    d.add_argument("--train-csv", help="linear_probe: training CSV (instead of --csv with a split column)")
    d.add_argument("--val-csv", help="linear_probe: validation CSV (default: 20%% held out of the training CSV)")
    d.add_argument("--test-csv", help="linear_probe: test CSV")
    d.add_argument("--split-column", default=None, help="linear_probe: split column of --csv (default split; "
                                                        "values train/val/test)")
    d.add_argument("--shots", type=int, nargs="+", default=None,
                   help="linear_probe: few-shot runs with K images per class, e.g. --shots 1 2 4 8 16")
    d.add_argument("--percent-data", type=float, default=None, help="linear_probe: train on P%% of the training set")
    d.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="linear_probe: sampling seeds of --shots / --percent-data runs (default 0 1 2)")
    d.add_argument("--images", help="infer / embed / explain: an image file or a folder of images")
    d.add_argument("--embeddings", help="embed: output, OUT.npz or a directory (image.npy, text.npy + CSV indexes)")
    d.add_argument("--texts", nargs="+", default=None, help="embed / explain: texts to encode or to locate")
    d.add_argument("--texts-file", default=None, help="embed: texts, one a line (or a CSV with --text-column)")
    d.add_argument("--text-column", default=None, help="embed: text column of a --texts-file CSV (default text)")
    d.add_argument("--with-patches", action="store_true", help="embed: also the patch embeddings (float16)")
    d.add_argument("--chunk", type=int, default=None, help="embed: images per saved chunk (default 1024; resumable)")
    d.add_argument("--explain-dir", default=None, help="explain: folder for the overlay PNGs and .npz grids")
    d.add_argument("--sigma", type=float, default=None, help="explain: SLRA patch threshold σ (default 0)")
    d.add_argument("--recursive", action="store_true", help="infer: also images in sub-folders")
    return p


def load_encoder(checkpoint: str | None = None, random_init: str | None = None, *, seed: int = 0,
                 dtype: str | None = None, batch_size: int = 32, text_batch_size: int | None = None,
                 activation: str | None = None):
    """`make_jax.load(checkpoint)`, or an Encoder around a randomly initialised preset."""
    if random_init:
        from make_jax.inference import Encoder
        from make_jax.models import create_model, get_model_config

        overrides = {k: v for k, v in (("dtype", dtype), ("activation", activation)) if v}
        cfg = get_model_config(random_init, **overrides)
        return Encoder(create_model(cfg, seed=seed), batch_size=batch_size, text_batch_size=text_batch_size)
    if not checkpoint:
        raise ValueError("give --checkpoint DIR (or --random-init PRESET for a pipeline check)")
    from make_jax.inference import load

    return load(checkpoint, dtype=dtype, batch_size=batch_size, text_batch_size=text_batch_size,
                activation=activation)


def load_config(spec: str) -> dict:
    """configs/eval_x.py[:ARG] or eval_x[:ARG] → plain dict from its get_config(ARG) (an ml_collections ConfigDict or a dict)."""
    from make_jax.config_names import config_path

    path, _, arg = spec.partition(":")
    path = str(config_path(path))  # a file, or the name of a packaged config (eval_paper, eval_synthderm, ...)
    mod_spec = importlib.util.spec_from_file_location(f"_make_eval_config_{abs(hash(path))}", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    if not hasattr(mod, "get_config"):
        raise ValueError(f"config {path}: defines no get_config()")
    cfg = mod.get_config(arg) if arg else mod.get_config()
    if hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    return _plain(cfg)


def _plain(x):
    if hasattr(x, "to_dict"):
        x = x.to_dict()
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _task_options(task: registry.Task, args: argparse.Namespace) -> dict:
    names = {"csv", "image_root", "classes", "templates", "filename_column", "label_column", "save_predictions",
             "data_dir", "meta", "image_dir", "concept_list", "concept_terms", "concept_prompts", "id_column",
             "save_scores", "caption_column", "ks", "images", "recursive", "workers", "strict", "train_csv",
             "val_csv", "test_csv", "split_column", "shots", "percent_data", "seeds", "predictions_csv", "bootstrap",
             "bootstrap_seed", "embeddings", "texts", "texts_file", "text_column", "with_patches", "chunk",
             "explain_dir", "sigma"}
    opts = {k: getattr(args, k) for k in names if k in task.options and getattr(args, k) not in (None, False)}
    if args.topk is not None and "topk" in task.options:
        opts["topk"] = max(args.topk) if task.name == "infer" else tuple(args.topk)
    return opts


def _fmt(v) -> str:
    return "-" if v is None or v != v else (f"{v:.4f}" if isinstance(v, float) else str(v))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    try:
        if args.out:  # before the encoder and the datasets are loaded
            check_writable(Path(args.out).absolute().parent, f"the folder of --out {args.out}", create=False)
        cfg = load_config(args.config) if args.config else {}
        checkpoint = args.checkpoint or cfg.get("checkpoint") or None
        random_init = args.random_init or (None if checkpoint else cfg.get("random_init"))
        if args.task:  # a one-entry set from the flags
            task = registry.get(args.task)
            opts = _task_options(task, args)
            missing = [o for o in task.required if o not in opts]
            if missing:
                flags = ", ".join("--" + o.replace("_", "-") for o in missing)
                raise ValueError(f"task {task.name} needs {flags}")
            entries = [suite.EvalEntry(args.name or task.name, task.name, 0, opts)]
        else:
            entries = suite.parse_evals(cfg.get("evals"), where=f"config {args.config}: evals")
        encoder = load_encoder(checkpoint, random_init, seed=args.seed, dtype=args.dtype or cfg.get("dtype"),
                               batch_size=cfg.get("batch_size", args.batch_size),
                               text_batch_size=args.text_batch_size or cfg.get("text_batch_size"),
                               activation=args.activation)
    except (DatasetError, FileNotFoundError, ValueError, KeyError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model = {"checkpoint": (str(Path(checkpoint).absolute()) if Path(checkpoint).exists() else checkpoint)
             if checkpoint else None, "random_init": random_init,
             "dtype": args.dtype or cfg.get("dtype"), "batch_size": getattr(encoder, "batch_size", None)}
    defaults = {"workers": args.workers, "progress": not args.no_progress, "strict": args.strict}
    # With --format json, stdout carries exactly one JSON document: tables and the summary are not printed.
    echo = (lambda text: print(text, flush=True)) if args.format == "table" else None
    results = suite.run_evals(encoder, entries, defaults=defaults, echo=echo)

    if args.task:
        result = results[0]
        if "error" in result:
            print(f"error: {result['error']}", file=sys.stderr)
            return 2
        if not args.name:
            result.pop("name")
        out = {**model, **result, "seconds": time.perf_counter() - t_start, "argv": list(sys.argv[1:] if argv is None
                                                                                          else argv)}
        if args.format == "json":
            print(json.dumps(to_jsonable(out), indent=1))
        if args.out:
            suite.write_json(args.out, out)
        return 0

    failed = [r for r in results if "error" in r]
    for r in failed:
        print(f"error in {r['name']}: {r['error']}", file=sys.stderr, flush=True)
    summary = suite.summarize(results, cfg.get("published"))
    if args.format == "table":
        print("\nsummary")
        for s in summary:
            vals = "  ".join(f"{k} {_fmt(v)}" for k, v in s.items() if k not in ("name", "task", "published"))
            if "published" in s:
                vals += "  | published " + "  ".join(f"{k} {_fmt(v)}" for k, v in s["published"].items())
            print(f"  {str(s['name']):<16} {str(s['task']):<10} {vals}")
    out = {**model, "config": args.config, "results": results, "summary": summary,
           "seconds": time.perf_counter() - t_start}
    if args.format == "json":
        print(json.dumps(to_jsonable(out), indent=1))
    if args.out:
        suite.write_json(args.out, out)
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
