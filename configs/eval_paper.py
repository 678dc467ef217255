"""The paper's evaluation tables (docs/evaluation.md) in one call:

    python -m make_jax.evaluate --checkpoint ckpt/make_vitb16 --config configs/eval_paper.py:/data/eval \
        --out results/paper.json

ARG (after the colon) is the folder holding the public sets, laid out as docs/evaluation.md describes:

    ROOT/PAD/test.csv  ROOT/PAD/images/...          (filename,label; label = index into the PAD list)
    ROOT/F17K/test.csv ROOT/F17K/images/...
    ROOT/SNU-134/test.csv ...   ROOT/SD-128/test.csv ...
    ROOT/skincon/{final_images/, meta.csv, concept_list.txt}
    ROOT/derm7pt/{final_images/, meta.csv, concept_list.txt}
    ROOT/skincap/skincap.csv ROOT/skincap/images/...   (filename + caption_zh_polish_en)

A set whose files are missing is reported as an error in the results; the others still run.
"""

import ml_collections

# Published numbers (MAKE paper) for comparison in the summary; see docs/evaluation.md.
# Keys are the set names below and the headline metrics each task registers (make_jax.evaluate.registry).
PUBLISHED = {"PAD": {"top1": 0.5953}, "F17K": {"top1": 0.3242}, "SNU-134": {"top1": 0.3270},
             "SD-128": {"top1": 0.3914}, "SkinCon": {"mean_auroc": 0.7873}, "Derm7pt": {"mean_auroc": 0.6864},
             "SkinCAP": {"i2t_R@10": 0.2096, "t2i_R@10": 0.1995}}


def get_config(arg: str = "data/eval"):
    root = arg.rstrip("/")
    c = ml_collections.ConfigDict()
    c.checkpoint = ""  # give --checkpoint on the command line
    c.batch_size = 64
    c.published = PUBLISHED
    zs = lambda name, preset: dict(task="zero_shot", csv=f"{root}/{name}/test.csv",  # noqa: E731
                                   image_root=f"{root}/{name}/images", classes=preset, topk=(1, 5))
    c.evals = ml_collections.ConfigDict({
        "PAD": zs("PAD", "PAD"),
        "F17K": zs("F17K", "F17K"),
        "SNU-134": zs("SNU-134", "SNU-134"),
        "SD-128": zs("SD-128", "SD-128"),
        "SkinCon": dict(task="concepts", data_dir=f"{root}/skincon"),
        "Derm7pt": dict(task="concepts", data_dir=f"{root}/derm7pt"),
        "SkinCAP": dict(task="retrieval", csv=f"{root}/skincap/skincap.csv", image_root=f"{root}/skincap/images",
                        caption_column="caption_zh_polish_en"),
    }, sort_keys=False)
    return c
