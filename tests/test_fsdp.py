"""Parameters and optimizer state split over the `fsdp` mesh axis (make_jax/train/sharding.py): the rules, the
mesh config, the memory report, and 8 simulated CPU devices training the same as replicated."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs.common import base_config
from conftest import xla_flags
from make_jax.train.config import ConfigError, check_config
from make_jax.train.sharding import auto_spec, check_rules, make_mesh, mesh_shape, param_shardings, spec_for

# One worker runs the whole module: its module-scoped `eight_devices` (minutes) is then computed once, not once per
# xdist worker that gets one of its tests (`--dist loadgroup`, pyproject.toml).
pytestmark = pytest.mark.xdist_group("fsdp")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"data": 2, "fsdp": 4}
# 8 simulated devices and the suite's XLA flags (every layout uses them, so they stay comparable). The
# persistent compilation cache is off: XLA:CPU programs loaded from it deadlock in the fsdp step's collectives
# (make_jax/train/sharding.py cpu_cache_conflict), and the training loop refuses fsdp with it on. A deadlock
# would abort the process after 30 s instead of hanging.
CPU_ENV = {"XLA_FLAGS": xla_flags(8) + " --xla_cpu_collective_call_terminate_timeout_seconds=30",
           "JAX_ENABLE_COMPILATION_CACHE": "false"}


def _spec(name, shape, rules=()):
    return spec_for(name, shape, check_rules(rules), SIZES)


def test_rules_first_full_match_wins_then_the_automatic_rule():
    rules = [(r"text/token_embedding", ("fsdp",)),
             (r".*/kernel", (None, None, "fsdp")),
             (r"visual/.*", ()),                      # everything else of the image tower replicated
             (r".*/c_fc/kernel", (None, "fsdp"))]     # never reached for kernels: rule 1 took them
    assert _spec("text/token_embedding", (49408, 64), rules) == (P("fsdp"), 0)
    assert _spec("visual/transformer/blocks/mlp/c_fc/kernel", (2, 64, 256), rules) == (P(None, None, "fsdp"), 1)
    assert _spec("visual/proj", (64, 32), rules) == (P(), 2)
    # a full match: "visual/.*" does not match "text/visual/x", and ".*/kernel" not "a/kernel_b"
    assert _spec("text/visual/x", (8, 8), [(r"visual/.*", ())])[1] == -1
    assert _spec("a/kernel_b", (8, 8), [(r".*/kernel", ())])[1] == -1
    # unmatched names: the automatic rule (rule index -1)
    assert _spec("text/text_projection", (64, 32), rules) == (P("fsdp"), -1)


def test_automatic_rule_by_hand():
    # the largest axis divisible by fsdp=4; never the stacked layer axis (axis 0 under /blocks/)
    assert auto_spec("visual/transformer/blocks/mlp/c_fc/kernel", (24, 64, 256), 4) == P(None, None, "fsdp")
    assert auto_spec("visual/transformer/blocks/mlp/c_proj/kernel", (24, 256, 64), 4) == P(None, "fsdp")
    assert auto_spec("x/blocks/attn/out_proj/kernel", (400, 64, 64), 4) == P(None, "fsdp")  # first of equals
    assert auto_spec("visual/positional_embedding", (17, 64), 4) == P(None, "fsdp")       # 17 is indivisible
    assert auto_spec("visual/conv1", (16, 16, 3, 1024), 4) == P(None, None, None, "fsdp")
    assert auto_spec("visual/conv1", (16, 16, 3, 1024), 3) == P(None, None, "fsdp")       # the only divisible
    # replicated: < 2 axes per layer (LayerNorm, biases, class embedding, logit_scale), or nothing divides
    assert auto_spec("visual/transformer/blocks/ln_1/scale", (24, 1024), 4) == P()
    assert auto_spec("visual/class_embedding", (1024,), 4) == P()
    assert auto_spec("logit_scale", (), 4) == P()
    assert auto_spec("visual/positional_embedding", (17, 63), 4) == P()


def test_bad_rules_are_refused_in_one_line():
    for rules, words in [([(r"(", ())], "config.sharding_rules[0]: bad regex"),
                         ([(r".*", ("model",))], "'model' is not a mesh axis"),
                         ([(r".*", ("fsdp", "fsdp"))], "one array axis only"),
                         ([(r".*",)], "must be (regex")]:
        with pytest.raises(ConfigError, match=None) as e:
            check_rules(rules)
        assert words in str(e.value) and "\n" not in str(e.value)
    # an explicit spec whose axis does not divide the dimension is refused (the automatic rule would replicate)
    with pytest.raises(ConfigError, match=r"config.sharding_rules\[0\].*axis 0 of visual/proj \(30, 32\) is not "
                                          r"divisible by fsdp=4"):
        _spec("visual/proj", (30, 32), [(r"visual/proj", ("fsdp",))])
    with pytest.raises(ConfigError, match="has 1 axes"):
        _spec("visual/class_embedding", (64,), [(r".*class.*", (None, "fsdp"))])
    # a rule that matches no parameter (a typo) is refused, not ignored
    params = {"visual": {"proj": jax.ShapeDtypeStruct((64, 32), np.float32)}}
    mesh = make_mesh(jax.devices()[:1])
    param_shardings(params, mesh, [(r"visual/proj", ())])
    with pytest.raises(ConfigError, match=r"config.sharding_rules\[1\] \('visual/porj'\) matches no parameter"):
        param_shardings(params, mesh, [(r"visual/proj", ()), (r"visual/porj", ())])
    # and through the config check
    c = base_config()
    c.sharding_rules = ((r".*", ("tensor",)),)
    with pytest.raises(ConfigError, match=r"config.sharding_rules\[0\]: 'tensor' is not a mesh axis"):
        check_config(c)


def test_mesh_config():
    assert mesh_shape(-1, 1, 8) == (8, 1)
    assert mesh_shape(-1, 4, 8) == (2, 4)
    assert mesh_shape(2, -1, 8) == (2, 4)
    assert mesh_shape(2, 4, 8) == (2, 4)
    for (data, fsdp), words in [((2, 2), "config.mesh: data=2 x fsdp=2 = 4 devices, but there are 8"),
                                ((-1, 3), "config.mesh.data=-1: 8 device(s) are not divisible by the other axis (3)"),
                                ((-1, -1), "config.mesh: only one axis may be -1"),
                                ((0, 8), "config.mesh.data must be >= 1 or -1")]:
        with pytest.raises(ConfigError) as e:
            mesh_shape(data, fsdp, 8)
        assert str(e.value) == words or str(e.value).startswith(words), str(e.value)
    c = base_config()
    assert (c.mesh.data, c.mesh.fsdp) == (-1, 1)  # the default: replicated parameters
    c.mesh.fsdp = 0
    with pytest.raises(ConfigError, match=r"^config.mesh.fsdp must be >= 1 or -1"):
        check_config(c)
    c = base_config()
    c.mesh.tensor = 2
    with pytest.raises(ConfigError, match=r"^config.mesh.tensor: unknown field"):
        check_config(c)


# One process, 8 simulated devices, every parameter laid out by the automatic rule (the layer blocks' kernels
# split inside their layer scans, the embeddings, projections and patch conv too; LayerNorms and biases whole).
# 1. The train step: the tiny model trained 2 AdamW steps (clipping and weight decay on) with the parameters
#    replicated (mesh data=8), and split over fsdp=4 (data=2) with GradCache (2 micro-batches); then a
#    checkpoint of the split state restored into the split layout.
# 2. The training loop (`train()`, the demo config on the tiny model, one-pass step) for 2 steps replicated, and
#    with fsdp=4 stopped after step 1 and resumed from its checkpoint: the two exports.
# 3. The loop's refusal of fsdp on CPU once JAX's persistent compilation cache is on.
_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, {repo!r})
    sys.path.insert(0, {repo!r} + "/tests")
    from tests.test_train_step import _batch
    from conftest import exported_params, tiny_train_config
    from make_jax.losses import LossConfig
    from make_jax.models import create_model, get_model_config
    from make_jax.train import loop
    from make_jax.train.checkpointing import TrainCheckpoints, abstract_like
    from make_jax.train.config import ConfigError
    from make_jax.train.gradcache import select_train_step
    from make_jax.train.optimizer import make_optimizer, path_name
    from make_jax.train.sharding import batch_sharding, bytes_per_device, host_copy, make_mesh
    from make_jax.train.step import ModelFunctions, init_sharded_state, jit_train_step

    tmp = {tmp!r}
    model = create_model(get_model_config("tiny"), seed=7)
    fns = ModelFunctions(model)
    params = fns.params(model)
    opt, sched = make_optimizer(params, lr=1e-3, warmup_steps=1, total_steps=10, weight_decay=0.1,
                                grad_clip_norm=1.0)
    out = {{}}
    for name, (data, fsdp, k) in {{"replicated": (8, 1, 1), "fsdp_gradcache": (2, 4, 2)}}.items():
        mesh = make_mesh(data=data, fsdp=fsdp)
        state, sh = init_sharded_state(params, opt, mesh)
        step = jit_train_step(select_train_step(fns, opt, LossConfig(), sched, k), mesh, state, sh)
        losses = []
        for i in range(2):
            batch = jax.device_put(_batch(b=16, seed=i), batch_sharding(mesh))
            state, m = step(state, batch)
            losses.append(float(m["loss"]))
        leaves = jax.tree_util.tree_leaves_with_path(state)
        np.save(tmp + f"/{{name}}.npy", np.concatenate([x.ravel() for x in jax.tree.leaves(host_copy(state.params))]))
        out[name] = {{
            "losses": losses, "compiled": step._cache_size(),
            "leaves": [[path_name(p), list(x.shape), x.dtype.itemsize, str(x.sharding.spec),
                        list(x.addressable_shards[0].data.shape)] for p, x in leaves],
            # measured: the bytes device 0 really holds
            "device0_bytes": int(sum(s.data.nbytes for x in jax.tree.leaves(state) for s in x.addressable_shards
                                     if s.device == jax.devices()[0])),
            "reported_bytes": bytes_per_device(state, sh),
        }}
        if name == "fsdp_gradcache":
            ckpts = TrainCheckpoints(tmp + "/ckpt")
            ckpts.save(2, state, {{}}, {{}})
            fresh, _ = init_sharded_state(params, opt, mesh)
            restored, _, _ = ckpts.restore(2, abstract_like(fresh))
            same = all(np.array_equal(a, b)
                       for a, b in zip(jax.tree.leaves(host_copy(restored)), jax.tree.leaves(host_copy(state))))
            layout = all(a.sharding == b for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(sh)))
            out["restore"] = {{"same": same, "layout": layout}}
            ckpts.close()

    def loop_config(fsdp):
        config = tiny_train_config({records!r})
        config.total_steps, config.checkpoint_every, config.log_every, config.mesh.fsdp = 2, 1, 1, fsdp
        return config

    # the loop's initial parameters (the tiny model at the config's seed), to show that training moved them
    init = fns.params(create_model(get_model_config("tiny"), seed=loop_config(1).seed))
    np.savez(tmp + "/loop_init.npz", **{{jax.tree_util.keystr(k): np.asarray(v)
                                        for k, v in jax.tree_util.tree_leaves_with_path(init)}})
    loop.train(loop_config(1), tmp + "/loop_replicated")
    first = loop.train(loop_config(4), tmp + "/loop_fsdp", stop_after=1)
    second = loop.train(loop_config(4), tmp + "/loop_fsdp")  # resumes from checkpoint 1
    out["loop_fsdp_steps"] = [first["step"], second["step"]]
    for name in ("loop_replicated", "loop_fsdp"):
        np.savez(tmp + f"/{{name}}.npz", **exported_params(tmp + f"/{{name}}/export"))
        out[name] = [json.loads(line)["loss"] for line in open(tmp + f"/{{name}}/metrics.jsonl")
                     if json.loads(line).get("split") == "train"]

    # the refusal is decided from JAX's config before any work; this process never read or wrote the cache
    jax.config.update("jax_compilation_cache_dir", tmp + "/jax-cache")
    jax.config.update("jax_enable_compilation_cache", True)
    try:
        loop.train(loop_config(4), tmp + "/refused", make_data=lambda *a: 1 / 0)
    except ConfigError as e:
        out["refused"] = str(e)
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory, synthderm_small):
    tmp = str(tmp_path_factory.mktemp("fsdp"))
    env = dict(os.environ, JAX_PLATFORMS="cpu", **CPU_ENV)
    script = _SCRIPT.format(repo=REPO, tmp=tmp, records=str(synthderm_small[1]))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["tmp"] = tmp
    for name in ("replicated", "fsdp_gradcache"):
        out[name]["params"] = np.load(os.path.join(tmp, f"{name}.npy"))
    return out


def test_fsdp_trains_like_replicated(eight_devices):
    ref = eight_devices["replicated"]
    assert all(eight_devices[k]["compiled"] == 1 for k in ("replicated", "fsdp_gradcache"))  # one compile per layout
    assert not np.isclose(ref["losses"][0], ref["losses"][1])  # two batches, two losses: the test can tell
    assert not np.allclose(ref["params"], 0)
    run = eight_devices["fsdp_gradcache"]
    # float32: the layouts only sum the batch and the gradients in another order (all-reduce vs reduce-scatter,
    # micro-batches). An AdamW step moves a parameter by up to lr = 1e-3 in the direction m / (sqrt(v) + eps),
    # which amplifies those rounding differences for gradients near eps = 1e-6: measured, 99.9 % of the values
    # agree to 1.5e-8, the largest difference is 1.9e-6. atol 1e-5 is 1 % of one step; a misplaced shard is off by
    # the parameter's own size (~1e-2).
    np.testing.assert_allclose(run["losses"], ref["losses"], rtol=1e-5)
    np.testing.assert_allclose(run["params"], ref["params"], rtol=1e-5, atol=1e-5)


def test_training_loop_with_fsdp_and_resume_trains_like_replicated(eight_devices):
    tmp = eight_devices["tmp"]
    assert eight_devices["loop_fsdp_steps"] == [1, 2]  # stopped after step 1, then resumed and finished
    ref, run = eight_devices["loop_replicated"], eight_devices["loop_fsdp"]
    assert len(ref) == len(run) == 2 and ref[0] != ref[1]
    np.testing.assert_allclose(run, ref, rtol=1e-5)
    a = dict(np.load(os.path.join(tmp, "loop_replicated.npz")))
    b = dict(np.load(os.path.join(tmp, "loop_fsdp.npz")))
    assert a.keys() == b.keys() and len(a) == 38
    init = dict(np.load(os.path.join(tmp, "loop_init.npz")))
    assert init.keys() == a.keys()
    moved = 0
    for k in a:
        # float32 sums in another order (all-reduce vs reduce-scatter) differ in the last bits of the gradients;
        # AdamW's m / (sqrt(v) + eps) amplifies that where a gradient is near eps. The demo's warmup moves every
        # parameter by ~lr_1 + lr_2 = 3e-5 in 2 steps; measured: most arrays agree to 1e-8, the worst (an image
        # attention kernel) to 1.75e-6. atol 5e-6 is 17 % of those 2 steps.
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=5e-6, err_msg=k)
        moved += not np.array_equal(a[k], init[k])
    assert moved == len(a)  # training moved every array: not two copies of the initialisation


def _split_by_hand(name, shape):
    """Split 4 ways in the fsdp runs: >= 2 axes per layer (the stacked layer axis of `/blocks/` not counted);
    every such tiny-model array has an axis divisible by 4 (see the names below)."""
    return len(shape) - ("/blocks/" in name) >= 2


def test_parameters_and_optimizer_state_are_split(eight_devices):
    leaves = eight_devices["fsdp_gradcache"]["leaves"]
    split = 0
    for name, shape, _, spec, shard in leaves:
        if name.startswith("params/") or "/mu/" in name or "/nu/" in name:
            if _split_by_hand(name, shape):
                assert "fsdp" in spec, name
                assert np.prod(shard) * 4 == np.prod(shape), (name, shape, shard)
                split += 1
                continue
        assert spec == str(P()) and shard == shape, (name, spec)
    # by hand: text positional_embedding, text_projection, token_embedding; visual conv1, positional_embedding,
    # proj; per tower the blocks' in_proj, out_proj, c_fc and c_proj kernels: 6 + 2 x 4 = 14 parameters, each with
    # its mu and nu
    assert split == 3 * 14, split
    by_name = {name: (spec, shard) for name, _, _, spec, shard in leaves}
    assert by_name["params/text/token_embedding"] == (str(P("fsdp")), [12352, 64])
    assert by_name["opt_state/1/0/nu/text/token_embedding"] == (str(P("fsdp")), [12352, 64])
    # the stacked layer axis (2) is never split; the widest other axis is
    assert by_name["params/visual/transformer/blocks/mlp/c_fc/kernel"] == (str(P(None, None, "fsdp")), [2, 64, 64])
    assert by_name["opt_state/1/0/mu/text/transformer/blocks/mlp/c_proj/kernel"] == (str(P(None, "fsdp")),
                                                                                      [2, 64, 64])
    assert by_name["params/visual/transformer/blocks/ln_1/scale"] == (str(P()), [2, 64])
    assert by_name["params/visual/conv1"] == (str(P(None, None, None, "fsdp")), [8, 8, 3, 16])
    # mesh data=8 x fsdp=1: the same specs, but a size-1 axis splits nothing: every device holds every array
    for name, shape, _, _, shard in eight_devices["replicated"]["leaves"]:
        assert shard == shape, name


def test_memory_per_device_by_hand(eight_devices):
    # by hand: the arrays of _split_by_hand are split 4 ways; the rest (LayerNorms, biases, class embedding,
    # logit_scale, the step and the Adam count) is held whole.
    for name, fsdp in (("replicated", 1), ("fsdp_gradcache", 4)):
        run = eight_devices[name]
        want = 0
        for leaf, shape, itemsize, _, _ in run["leaves"]:
            size = int(np.prod(shape)) * itemsize
            split = leaf.startswith("params/") or "/mu/" in leaf or "/nu/" in leaf
            want += size // fsdp if split and _split_by_hand(leaf, shape) else size
        assert run["reported_bytes"] == want
        assert run["device0_bytes"] == want
    assert eight_devices["fsdp_gradcache"]["reported_bytes"] < eight_devices["replicated"]["reported_bytes"] / 3


def test_checkpoint_restores_into_the_split_layout(eight_devices):
    assert eight_devices["restore"] == {"same": True, "layout": True}


def test_training_loop_refuses_fsdp_on_cpu_with_the_compilation_cache(eight_devices):
    tmp = eight_devices["tmp"]
    assert eight_devices["refused"] == (
        f"config.mesh.fsdp=4 on CPU devices with JAX's persistent compilation cache on ({tmp}/jax-cache): XLA:CPU "
        "programs loaded from it deadlock in the fsdp step's collectives (docs/training.md); set "
        "JAX_ENABLE_COMPILATION_CACHE=false, or fsdp=1")
