"""All three evaluation tasks on a SynthDerm output folder (python -m make_jax.synthderm --out DIR):

    python -m make_jax.evaluate --checkpoint ckpt/small --config configs/eval_synthderm.py:DIR --out sd.json

`synthderm_evals(DIR)` is the same set as a training config's `evals` (configs/demo.py), named `zeroshot`,
`concepts`, `retrieval` so that `--config.evals.zeroshot.every=N` reaches them; here they are `synthderm-*`.
"""

import ml_collections


def synthderm_evals(root: str, zero_shot_every: int = 0) -> ml_collections.ConfigDict:
    """SynthDerm's held-out zero-shot, concept and retrieval sets under `root`, in that order."""
    root = root.rstrip("/")
    return ml_collections.ConfigDict({
        "zeroshot": dict(task="zero_shot", every=zero_shot_every, csv=f"{root}/zeroshot/test.csv",
                         classes=f"{root}/zeroshot/classnames.json", topk=(1, 5)),
        "concepts": dict(task="concepts", data_dir=f"{root}/skincon"),
        "retrieval": dict(task="retrieval", csv=f"{root}/retrieval/retrieval.csv"),
    }, sort_keys=False)


def get_config(arg: str = "synthderm"):
    c = ml_collections.ConfigDict()
    c.checkpoint = ""
    c.batch_size = 32
    c.evals = ml_collections.ConfigDict({f"synthderm-{k}": v for k, v in synthderm_evals(arg).items()},
                                        sort_keys=False)
    return c
