"""Packing across processes (make_jax.train.packing.pack_process_batch): every process packs its own rows at one
agreed tier and buckets, with row indices offset into the global arrays.

* The agreement and the global offsets, by hand (`agree_pack`, `globalize_rows`).
* Two processes simulated in this one (no JAX): their packed parts, concatenated as
  `jax.make_array_from_process_local_data` concatenates them, have one shape and reconstruct exactly the global
  dense batch's valid (image, slot, text) rows — the reference is the dense batch itself, read in numpy.
* Two real processes x 2 simulated CPU devices (jax.distributed, gloo): the packed global step equals the dense
  global step in loss, loss terms and every gradient.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from make_jax.train.packing import (DEFAULT_BUCKETS, BatchPlan, PackConfig, agree_pack, globalize_rows,
                                    pack_process_batch, text_groups)

# The multi-process modules run on one worker, one training job at a time (`--dist loadgroup`;
# tests/test_multiprocess_faults.py says why).
pytestmark = pytest.mark.xdist_group("multiprocess")

REPO = Path(__file__).resolve().parents[1]
SOT, EOT = 49406, 49407
N, L = 11, 32
# 2 tiers, de-duplication, buckets below the 32-token context, two length groups: every part of the agreement
CONFIG = PackConfig(row_budgets=(20, 44), unique_budgets=(16, 44), buckets=(8, 12, 16, 24), groups=(0.5, 0.5),
                    multiple_of=2)


# ---- by hand ------------------------------------------------------------------------------------------------

def test_agree_pack_by_hand():
    # (P=2, T=2, 2 + G=2): [fits, dropped, bucket_0, bucket_1] per tier
    p0 = [[1, 0, 8, 12], [1, 0, 8, 12]]
    p1 = [[0, 0, 0, 0], [1, 0, 12, 32]]
    assert agree_pack(np.array([p0, p1])) == (1, (12, 32), 0)  # p1 needs tier 1; the longer bucket per group
    assert agree_pack(np.array([p1, p0])) == (1, (12, 32), 0)  # the order of the gathered rows is irrelevant
    assert agree_pack(np.array([p0, p0])) == (0, (8, 12), 0)
    q0 = [[0, 0, 0, 0], [0, 3, 16, 32]]  # overflows the last tier: 3 subtexts dropped
    q1 = [[0, 0, 0, 0], [0, 2, 24, 24]]
    assert agree_pack(np.array([q0, q1, p0])) == (1, (24, 32), 5)


def test_globalize_rows_by_hand():
    config = PackConfig(row_budgets=(4, 8), buckets=None, groups=(0.5, 0.5), multiple_of=2)
    assert config.group_sizes(0) == (2, 2)
    packed = {"images": np.zeros((3, 1, 1, 3)), "row_text": np.array([0, 1, 2, 3], np.int32),
              "row_owner": np.array([0, 1, 2, 0], np.int32), "row_slot": np.array([0, 1, 0, 3], np.int32)}
    # global group 0 = [p0: 0 1 | p1: 2 3], group 1 = [p0: 4 5 | p1: 6 7]; process 1's images are 3..5
    out = globalize_rows(packed, config, 0, block=1, blocks=2)
    assert out["row_text"].tolist() == [2, 3, 6, 7]
    assert out["row_owner"].tolist() == [3, 4, 5, 3]
    assert out["row_slot"].tolist() == [0, 1, 0, 3]
    out = globalize_rows(packed, config, 0, block=0, blocks=2)
    assert out["row_text"].tolist() == [0, 1, 4, 5] and out["row_owner"].tolist() == [0, 1, 2, 0]
    # three processes, tier 1 (groups of 4): local text 5 is group 1, j = 1 -> 3·4 + 2·4 + 1
    out = globalize_rows({**packed, "row_text": np.array([5, 0, 3, 7])}, config, 1, block=2, blocks=3)
    assert out["row_text"].tolist() == [21, 8, 11, 23] and out["row_owner"].tolist() == [6, 7, 8, 6]


# ---- two processes simulated -----------------------------------------------------------------------------------

def _text(rng, length):
    row = np.zeros(L, np.int32)
    row[0], row[length - 1] = SOT, EOT
    row[1:length - 1] = rng.integers(1, 40000, length - 2)
    return row


def global_batch(seed=0, overflow=False):
    """8 images, 4 per process. Process 0's texts are 12-30 tokens (image 0's caption 30) with 2-6 subtexts an
    image: 29 rows, more than tier 0 holds. Process 1's are 6-10 tokens (image 4's caption 10) with 0-1 subtexts:
    13 rows, tier 0. The two disease texts (5-8 tokens) repeat across images and processes, concept texts within
    a process. `overflow`: process 0's images have 9 subtexts each, 48 rows > the last tier's 44."""
    rng = np.random.default_rng(seed)
    diseases = [_text(rng, int(rng.integers(5, 9))) for _ in range(2)]
    ids = np.zeros((8, N, L), np.int32)
    valid = np.zeros((8, N), bool)
    for i in range(8):
        p0 = i < 4
        ids[i] = [_text(rng, int(rng.integers(12, 31) if p0 else rng.integers(6, 11))) for _ in range(N)]
        ids[i, 1] = diseases[i % 2]
        valid[i, :3] = True
        subtexts = (8 if overflow else (4, 6, 2, 5)[i]) if p0 else i % 2
        valid[i, 3:3 + subtexts] = True
    ids[0, 0], ids[4, 0] = _text(rng, 30), _text(rng, 10)
    ids[3, 2], ids[7, 2] = ids[0, 2], ids[5, 2]  # concept texts shared within a process
    valid[5, 2] = False
    images = rng.integers(0, 256, (8, 32, 32, 3)).astype(np.uint8)
    return {"images": images, "text_ids": ids, "text_valid": valid}


def local_part(batch, p, count=2):
    b = len(batch["images"]) // count
    return {k: v[p * b:(p + 1) * b] for k, v in batch.items()}


def simulate(batch, config=CONFIG, count=2):
    """Each process packs its part with the requests of all (a gather done by hand); the parts concatenated."""
    parts = [local_part(batch, p, count) for p in range(count)]
    requests = np.stack([BatchPlan(x, config).request() for x in parts])
    out = []
    for p, x in enumerate(parts):
        def gather(r, p=p):
            np.testing.assert_array_equal(r, requests[p])
            return requests
        out.append(pack_process_batch(x, config, block=p, blocks=count, gather=gather))
    shapes = {tuple((k, v.shape) for k, v in sorted(o.items())) for o, _ in out}
    assert len(shapes) == 1, f"processes packed at different shapes: {shapes}"
    return {k: np.concatenate([o[k] for o, _ in out]) for k in out[0][0]}, [s for _, s in out]


def reconstruct(glob):
    """(owner, slot) -> canonical text of every valid global row, read through the global groups."""
    groups = [glob[f"text_ids_{g}"] for g in range(text_groups(glob))]
    width = max(g.shape[1] for g in groups)
    encoded = np.concatenate([np.pad(g, ((0, 0), (0, width - g.shape[1]))) for g in groups])
    rows = {}
    for r in np.flatnonzero(glob["row_valid"]):
        key = (int(glob["row_owner"][r]), int(glob["row_slot"][r]))
        assert key not in rows, f"row {key} packed twice"
        rows[key] = encoded[glob["row_text"][r]]
    return rows


def dense_rows(batch):
    ids, valid = batch["text_ids"], batch["text_valid"]
    return {(i, s): ids[i, s] for i, s in zip(*np.nonzero(valid))}


def test_two_processes_simulated_pack_the_global_dense_rows():
    batch = global_batch()
    own = [BatchPlan(local_part(batch, p), CONFIG) for p in range(2)]
    # The processes' own choices differ, so agreeing matters. Process 0: 29 rows > 20, tier 1; its 30-token
    # caption sorts into the second group: the 32-token context. Process 1: 13 rows, 11 distinct texts, tier 0;
    # at tier 1 (44 encoded slots, groups of 22) its 11 texts all sort after the 33 padding slots, so group 0 is
    # padding (the shortest bucket, 8) and group 1 holds its longest text, 10 tokens: bucket 12.
    assert (own[0].n_valid, own[0].own_tier, own[1].n_valid, own[1].n_unique, own[1].own_tier) == (29, 1, 13, 11, 0)
    assert own[0].buckets(1)[1] == 32 and own[1].buckets(1) == (8, 12)
    agreed = tuple(max(a, b) for a, b in zip(own[0].buckets(1), own[1].buckets(1)))
    glob, stats = simulate(batch)
    assert [s["tier"] for s in stats] == [1, 1] and [s["buckets"] for s in stats] == [agreed] * 2
    assert glob["row_owner"].shape == (2 * 44,) and glob["text_ids_1"].shape == (2 * 22, 32)
    np.testing.assert_array_equal(glob["images"], batch["images"])
    got, want = reconstruct(glob), dense_rows(batch)
    assert sorted(got) == sorted(want)
    for key, text in want.items():
        n = int(np.flatnonzero(text == EOT)[0]) + 1
        assert got[key][:n].tolist() == text[:n].tolist(), key
        assert not got[key][n:].any(), key  # trailing padding only
    assert [s["dropped"] for s in stats] == [0, 0]


def test_overflow_is_decided_per_process_and_counted_over_all():
    batch = global_batch(1, overflow=True)
    config = PackConfig(row_budgets=(20, 40), unique_budgets=(16, 40), buckets=(8, 12, 16, 24), groups=(0.5, 0.5),
                        multiple_of=2)
    glob, stats = simulate(batch, config)
    want = dense_rows(batch)
    got = reconstruct(glob)
    assert set(got) <= set(want)
    lost = set(want) - set(got)
    # process 0 holds 4 x 11 = 44 rows > 40 (its 37 distinct texts left after that fit): it drops 4 subtexts,
    # the last of each image (always the last subtext of the image with the most, ties to the highest image);
    # process 1 (13 rows) drops nothing, although it packs at the last tier too
    assert sorted(lost) == [(0, 10), (1, 10), (2, 10), (3, 10)]
    assert [s["tier"] for s in stats] == [1, 1]
    assert stats[0]["dropped"] == stats[1]["dropped"] == 4  # every process reports the job's total
    for key in got:
        n = int(np.flatnonzero(want[key] == EOT)[0]) + 1
        assert got[key][:n].tolist() == want[key][:n].tolist(), key


def test_unagreed_shapes_are_refused():
    batch = global_batch()
    plan = BatchPlan(local_part(batch, 0), CONFIG)
    with pytest.raises(ValueError, match="does not hold this batch"):
        plan.pack(0, (16, 32))
    with pytest.raises(ValueError, match="no shorter than this batch's own"):
        plan.pack(1, (8, 12))
    with pytest.raises(ValueError, match="gathered packing requests have shape"):
        pack_process_batch(local_part(batch, 0), CONFIG, block=0, blocks=2, gather=lambda r: r[None])


# ---- two real processes x 2 CPU devices ----------------------------------------------------------------------

def worker(out_dir: str) -> None:
    """One process of the job: the loop's packing config and per-step packing, then the dense and the packed
    global step on `global_batch()`; process 0 saves both."""
    from ml_collections import ConfigDict

    from make_jax.train.distributed import allgather_host, initialize_from_environment, process_block

    initialize_from_environment()
    import jax

    import make_jax.train.data
    from make_jax.losses import LossConfig
    from make_jax.models import create_model, get_model_config
    from make_jax.train.loop import _global_batch, packing_config
    from make_jax.train.step import ModelFunctions, batch_sharding, forward_loss, make_mesh, replicated

    mesh = make_mesh()
    sharding, rep = batch_sharding(mesh), replicated(mesh)
    block, blocks = process_block(sharding)
    local = local_part(global_batch(), block, blocks)
    # the loop's budgets: each process would size different ones from its own sample (29 vs 13 rows); all must
    # take process 0's
    make_jax.train.data.sample_batches = lambda config, count: [local] * count
    options = ConfigDict({"packing": {"enabled": True, "sample_batches": 1, "quantile": 1.0, "groups": (0.5, 0.5),
                                      "dedup": True}})
    loss_config = LossConfig()
    config = packing_config(options, loss_config, 1, get_model_config("tiny"))
    packed, stats = pack_process_batch(local, config, block=block, blocks=blocks, gather=allgather_host)

    model = create_model(get_model_config("tiny"), seed=0)
    fns = ModelFunctions(model)
    params = jax.device_put(fns.params(model), rep)
    f = jax.value_and_grad(lambda p, b: forward_loss(fns.merge(p), b, loss_config), has_aux=True)
    results = {}
    for name, host in (("dense", local), ("packed", packed)):
        batch = _global_batch(host, sharding)
        step = jax.jit(f, in_shardings=(rep, sharding), out_shardings=rep)
        (loss, terms), grads = jax.device_get(step(params, batch))
        results[name] = (loss, terms, grads)
    with open(os.path.join(out_dir, f"stats{jax.process_index()}.json"), "w") as fh:
        json.dump({**stats, "block": block, "shape": list(packed["row_owner"].shape),
                   "config": [config.row_budgets, config.unique_budgets, config.buckets]}, fh)
    if jax.process_index() == 0:
        flat = {}
        for name, (loss, terms, grads) in results.items():
            flat[f"{name}/loss"] = np.asarray(loss)
            flat.update({f"{name}/terms/{k}": np.asarray(v) for k, v in terms.items()})
            flat.update({f"{name}/grads/{jax.tree_util.keystr(k)}": np.asarray(v)
                         for k, v in jax.tree_util.tree_leaves_with_path(grads)})
        np.savez(os.path.join(out_dir, "results.npz"), **flat)


def test_two_processes_packed_step_equals_dense(tmp_path):
    from conftest import job_env
    from make_jax.train.local_job import free_port

    env = job_env(2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}", JAX_NUM_PROCESSES="2",
                  MAKE_JAX_HEARTBEAT_TIMEOUT="20", PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, __file__, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env={**env, "JAX_PROCESS_ID": str(i)})
             for i in range(2)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs), "\n".join(x[-3000:] for x in logs)

    stats = [json.loads((tmp_path / f"stats{i}.json").read_text()) for i in range(2)]
    assert [s["block"] for s in stats] == [0, 1]
    # process 0's sample: 29 rows and 26 distinct texts (multiples of 2, the local devices: 30, 26), 4 x 11 = 44
    # slots for the fallback tier
    assert [s["config"] for s in stats] == [[[30, 44], [26, 44], list(DEFAULT_BUCKETS)]] * 2
    # both processes fit tier 0; process 0's longest text (30 tokens) in the second group needs the context
    assert [(s["tier"], s["buckets"][1], s["shape"]) for s in stats] == [(0, 32, [30])] * 2
    assert stats[0]["buckets"] == stats[1]["buckets"]
    r = np.load(tmp_path / "results.npz")
    # Same maths, different float32 summation order (packed rows, shorter contexts, de-duplicated encodings):
    # the tolerances of tests/test_packing.py. A row pointing at the wrong image or text moves the loss by ~1e-2.
    assert float(r["packed/loss"]) == pytest.approx(float(r["dense/loss"]), rel=1e-5)
    terms = [k.split("/", 1)[1] for k in r.files if k.startswith("dense/terms/")]
    assert terms
    for k in terms:
        assert float(r[f"packed/{k}"]) == pytest.approx(float(r[f"dense/{k}"]), rel=2e-5, abs=1e-6), k
    grads = [k.split("/", 1)[1] for k in r.files if k.startswith("dense/grads/")]
    assert len(grads) == 38
    for k in grads:
        a, b = r[f"dense/{k}"], r[f"packed/{k}"]
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * np.abs(a).max() + 1e-30, err_msg=k)
    assert np.abs(r["dense/grads/['text']['text_projection']"]).max() > 0


if __name__ == "__main__":
    worker(sys.argv[1])
