"""All three evaluation tasks on a SynthDerm output folder (python -m make_jax.synthderm --out DIR):

    python -m make_jax.evaluate --checkpoint ckpt/small --config configs/eval_synthderm.py:DIR --out sd.json
"""

import ml_collections


def get_config(arg: str = "synthderm"):
    root = arg.rstrip("/")
    c = ml_collections.ConfigDict()
    c.checkpoint = ""
    c.batch_size = 32
    c.evals = [
        dict(name="synthderm-zeroshot", task="zero_shot", csv=f"{root}/zeroshot/test.csv",
             classes=f"{root}/zeroshot/classnames.json", topk=(1, 5)),
        dict(name="synthderm-concepts", task="concepts", data_dir=f"{root}/skincon"),
        dict(name="synthderm-retrieval", task="retrieval", csv=f"{root}/retrieval/retrieval.csv"),
    ]
    return c
