"""Bad inputs and faults (issue #13): each is refused in one line naming what is wrong, before any work, and
nothing is lost or silently changed. The one-line paths are tested in-process where possible; the few subprocess
tests run the real command line (launch.py, the converters) on tiny inputs."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import synthderm_small_prepare, tiny_train_config

REPO = Path(__file__).resolve().parents[1]


def _cli(*args, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=timeout)


def _one_line_error(proc, *needles):
    """A refused command: non-zero exit, no traceback, one line on stderr that holds every needle."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ---- config: sections from dataclass defaults, whole-config check --------------------------------------------

def test_every_dataclass_field_is_a_config_field_with_its_default():
    import dataclasses

    from configs.common import base_config
    from make_jax.data.transforms import TrainTransformConfig
    from make_jax.losses import LossConfig

    c = base_config()
    assert dict(c.loss) == dataclasses.asdict(LossConfig())  # eps included: settable
    want = {k: v for k, v in dataclasses.asdict(TrainTransformConfig()).items() if k != "size"}
    assert dict(c.data.augment) == want


def test_loss_eps_is_honoured():
    from configs.common import base_config
    from make_jax.train.loop import loss_config_from

    c = base_config()
    c.loss.eps = 1e-8
    assert loss_config_from(c).eps == 1e-8


@pytest.mark.parametrize("edit, needle", [
    (lambda c: setattr(c, "log_every", 0), "config.log_every must be > 0"),
    (lambda c: setattr(c, "checkpoint_every", 0), "config.checkpoint_every must be > 0"),
    (lambda c: setattr(c, "total_steps", -5), "config.total_steps"),
    (lambda c: (setattr(c, "total_steps", 0), setattr(c, "epochs", 0.0)), "train nothing"),
    (lambda c: setattr(c, "microbatches", 3), "not a multiple of config.microbatches=3"),
    (lambda c: c.__setitem__("evals", {"zs": dict(task="zero_shot", every=-1, csv="x.csv", classes="PAD")}),
     "config.evals.zs.every: must be an integer ≥ 0"),
    (lambda c: setattr(c.optim, "b2", 1.0), "config.optim.b2"),
    (lambda c: setattr(c.loss, "sigma", -0.1), "config.loss: sigma must be >= 0"),
    (lambda c: setattr(c.data.augment, "hue", 0.9), "config.data.augment: hue"),
    (lambda c: setattr(c.data, "worker_buffer_size", 0), "config.data: worker_buffer_size must be >= 1, got 0"),
    (lambda c: setattr(c.data, "slot0", "dager"), "config.data: slot0 must be 'raw' or 'dagger'"),
    (lambda c: c.data.__setitem__("recods", "x"), "config.data.recods: unknown field"),
    (lambda c: c.data.__setitem__("shuffle", False), "config.data.shuffle: unknown field"),  # was never read
    (lambda c: c.data.__setitem__("num_slots", 5), "config.data.num_slots: unknown field"),  # batches hold 11
    (lambda c: c.__delitem__("log_every"), "config.log_every: missing"),
    (lambda c: setattr(c.packing, "groups", (0.6, 0.2, 0.1)),
     "config.packing.groups must sum to 1, got (0.6, 0.2, 0.1)"),
    (lambda c: setattr(c.data, "context_length", 78), "config.data.context_length must be in [1, 77]"),
    (lambda c: (c.model.update(text_tower="bert", text_vocab="vocab.txt"), setattr(c.data, "context_length", 1)),
     "config.data.context_length must be >= 2 for text_tower='bert'"),
])
def test_bad_config_values_are_refused_in_one_line(edit, needle):
    from configs.common import base_config
    from make_jax.train.config import ConfigError, check_config

    c = base_config()
    c.unlock() if hasattr(c, "unlock") else None
    edit(c)
    with pytest.raises(ConfigError) as e:
        check_config(c)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_steps_batch_and_paths_are_checked_before_any_work(tmp_path):
    from configs.common import base_config
    from make_jax.train.config import ConfigError, check_config, check_paths, check_steps

    c = base_config()
    c.total_steps, c.epochs, c.batch_size = 0, 0.5, 64
    with pytest.raises(ConfigError, match="gives 0 steps"):
        check_steps(check_config(c), 100, device_count=1)  # 0.5 x 100 / 64 = 0 steps
    c.total_steps = 10
    with pytest.raises(ConfigError, match="not divisible by 3 device"):
        check_steps(check_config(c), 100, device_count=3)
    c.data.records = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match="config.data.records"):
        check_paths(check_config(c))
    c.data.records = ""
    with pytest.raises(ConfigError, match="config.data.records is empty"):
        check_paths(check_config(c))


@pytest.mark.parametrize("case, needle", [
    ("vocab", "config.model.text_vocab: no WordPiece vocab.txt at"),
    ("init", "config.model.text_init: no Hugging Face BertModel directory at"),
    ("no_config_json", "config.model.text_init: "),
    ("too_long", "config.data.context_length=41 exceeds the max_position_embeddings (40) of config.model.text_init"),
])
def test_the_text_towers_files_are_checked_before_data_preparation(tmp_path, monkeypatch, case, needle):
    """A wrong text_init / text_vocab, or a context longer than the BERT's position table, stops `run` before its
    data preparation steps (which may take long), in one line naming the field."""
    from configs.demo import get_config
    from make_jax.train import run as run_module
    from make_jax.train.config import ConfigError

    prepared = []
    monkeypatch.setattr(run_module, "prepare_data_once", lambda config: prepared.append(config))
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nskin\n", encoding="utf-8")
    if case != "no_config_json":  # what bert_text_config reads of a Hugging Face BertModel directory
        (bert / "config.json").write_text(json.dumps(dict(
            model_type="bert", vocab_size=5, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=16, max_position_embeddings=40)), encoding="utf-8")
    c = get_config()
    c.model.text_tower = "bert"
    c.model.text_vocab, c.model.text_init, c.data.context_length = {
        "vocab": (str(tmp_path / "nope.txt"), "", 16),
        "init": ("", str(tmp_path / "nope"), 16),
        "no_config_json": ("", str(bert), 16),
        "too_long": ("", str(bert), 41),
    }[case]
    with pytest.raises(ConfigError) as e:
        run_module.run(c, tmp_path / "work")
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert prepared == []


def test_the_demo_keeps_a_records_path_the_user_gives(synthderm_small):
    from configs.demo import get_config
    from make_jax.train.prepare import run_prepare

    root, _ = synthderm_small
    c = get_config()
    c.prepare.synthderm.update(synthderm_small_prepare(root), records=str(root / "records_should_not_be_made"))
    c.data.records = "/data/my_records"
    run_prepare(c)
    assert c.data.records == "/data/my_records"
    assert not (root / "records_should_not_be_made").exists()


@pytest.mark.parametrize("args, needles", [
    (["--config.data.recods=x"], ["launch.py: error:", "recods"]),
    (["--config.log_every=0"], ["config.log_every must be > 0"]),
    (["--config.total_steps=-5"], ["config.total_steps"]),
    (["--config=configs/no_such_config.py"], ["no config file configs/no_such_config.py"]),
])
def test_launch_refuses_bad_config_in_one_line(args, needles):
    proc = _cli("launch.py", "--config", "configs/demo.py", *args, "--print_config")
    assert proc.returncode == 2
    _one_line_error(proc, *needles)


def test_a_negative_local_processes_is_refused_in_one_line():
    proc = _cli("launch.py", "--config", "configs/demo.py", "--local_processes=-1")
    assert proc.returncode == 2
    _one_line_error(proc, "launch.py: error:", "local_processes", "-1")


# ---- config drift in a used workdir ----------------------------------------------------------------------------

def test_config_drift_is_refused_naming_each_field_and_the_record_is_kept(tmp_path):
    from make_jax.train.config import ConfigError
    from make_jax.train.workdir import CHANGES_FILE, CONFIG_FILE, claim_workdir

    old = {"optim": {"lr": 1e-3}, "total_steps": 10, "loss": {"slra": True}, "model": {"name": "tiny"},
           "progress": True}
    assert claim_workdir(tmp_path, old) == {}
    record = (tmp_path / CONFIG_FILE).read_bytes()
    assert claim_workdir(tmp_path, dict(old, progress=False)) == {}  # display only: not drift
    new = {"optim": {"lr": 2e-3}, "total_steps": 20, "loss": {"slra": True}, "model": {"name": "tiny"},
           "progress": True}
    with pytest.raises(ConfigError) as e:
        claim_workdir(tmp_path, new)
    msg = str(e.value)
    assert "optim.lr: 0.001 -> 0.002" in msg and "total_steps: 10 -> 20" in msg and "slra" not in msg
    assert "--allow_config_change" in msg and "\n" not in msg
    assert (tmp_path / CONFIG_FILE).read_bytes() == record
    assert claim_workdir(tmp_path, new, allow_change=True, step=3) == {"optim.lr": (1e-3, 2e-3),
                                                                       "total_steps": (10, 20)}
    assert (tmp_path / CONFIG_FILE).read_bytes() == record  # the record of the run as it started
    log = [json.loads(line) for line in (tmp_path / CHANGES_FILE).read_text().splitlines()]
    assert log == [{"resumed_at_step": 3, "changes": {"optim.lr": [1e-3, 2e-3], "total_steps": [10, 20]}}]
    with pytest.raises(ConfigError, match="another model"):
        claim_workdir(tmp_path, dict(new, model={"name": "ViT-B-16"}), allow_change=True)


def test_train_refuses_a_workdir_of_another_run_before_writing(synthderm_small, tmp_path):
    from make_jax.train.config import ConfigError
    from make_jax.train.loop import train

    _, records = synthderm_small
    run = tmp_path / "run"
    run.mkdir()
    c = tiny_train_config(records, total_steps=2)
    saved = json.loads(c.to_json_best_effort())
    saved["optim"]["lr"] = 0.5
    (run / "config.json").write_text(json.dumps(saved))
    before = (run / "config.json").read_bytes()
    with pytest.raises(ConfigError, match="optim.lr: 0.5 -> 0.001"):
        train(c, run)
    assert (run / "config.json").read_bytes() == before
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]  # no checkpoint, no metrics


@pytest.mark.parametrize("kind", ["file", "under_a_file"])
def test_an_unwritable_workdir_is_refused_before_the_work(tmp_path, kind):
    from make_jax.atomic_io import check_writable
    from make_jax.errors import InputError

    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    target = blocker if kind == "file" else blocker / "run"
    with pytest.raises(InputError, match="workdir"):
        check_writable(target, "workdir")


# ---- interrupts ------------------------------------------------------------------------------------------------

def test_ctrl_c_saves_the_current_step_and_says_so(synthderm_small, tmp_path):
    from make_jax.errors import Interrupted
    from make_jax.train.checkpointing import TrainCheckpoints
    from make_jax.train.data import make_train_data
    from make_jax.train.loop import train

    _, records = synthderm_small

    class SigintAtSecondBatch:
        def __init__(self, it):
            self.it, self.n = it, 0

        def __next__(self):
            self.n += 1
            if self.n == 2:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the loop fetches batch 2
            return next(self.it)

        def get_state(self):
            return self.it.get_state()

        def set_state(self, s):
            self.it.set_state(s)

    def make_data(config, index, count):
        it, n = make_train_data(config, index, count)
        return SigintAtSecondBatch(it), n

    c = tiny_train_config(records, total_steps=6, checkpoint_every=5)
    with pytest.raises(Interrupted, match="stopped at step 2 of 6") as e:
        train(c, tmp_path / "run", make_data=make_data)
    assert "rerun" in str(e.value)
    ckpts = TrainCheckpoints(tmp_path / "run" / "checkpoints")
    assert ckpts.all_steps() == [2]
    ckpts.close()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back


# ---- untrusted code: TorchScript ---------------------------------------------------------------------------------

@pytest.fixture()
def torchscript_archive(tmp_path):
    import torch
    import torch_reference as tr

    sd = tr.random_open_clip_state_dict(image_size=32, patch_size=8, v_width=128, v_layers=1, v_mlp=512,
                                        t_width=64, t_layers=1, t_mlp=256, embed_dim=16, seed=0)
    return tr.save_torchscript_state_dict(tmp_path / "model.pt", {**sd, "input_resolution": torch.tensor(32)})


def test_torchscript_is_refused_without_running_it(torchscript_archive, tmp_path, monkeypatch, capsys):
    import shutil

    import torch

    import torch_reference as tr
    from make_jax.checkpoint.open_clip_layout import CheckpointError
    from make_jax.checkpoint.readers import read_source
    from make_jax.convert import main

    def never(*a, **k):
        raise AssertionError("torch.jit.load ran")

    monkeypatch.setattr(torch.jit, "load", never)
    with pytest.raises(CheckpointError, match="TorchScript archive.*--allow-torchscript"):
        read_source(torchscript_archive)
    # Under a trusted name inside a downloaded folder: refused even with the flag (it only covers a named file).
    folder = tmp_path / "download"
    tr.write_open_clip_dir(folder, {}, tr.open_clip_model_cfg(image_size=32, patch_size=8, v_width=128, v_layers=1,
                                                               v_heads=2, v_mlp=512, t_width=64, t_layers=1,
                                                               t_heads=1, t_mlp=256, embed_dim=16),
                           quick_gelu=True, weights="bin")
    shutil.copy(torchscript_archive, folder / "open_clip_pytorch_model.bin")
    with pytest.raises(CheckpointError, match="TorchScript archive"):
        read_source(folder, allow_torchscript=True)
    assert main([str(torchscript_archive), str(tmp_path / "out")]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and str(torchscript_archive) in err[0]
    assert not (tmp_path / "out").exists()


def test_truncated_safetensors_is_one_clear_error(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    from make_jax.checkpoint.open_clip_layout import CheckpointError
    from make_jax.checkpoint.readers import read_tensors

    f = tmp_path / "w.safetensors"
    save_file({"a": np.zeros((64, 64), np.float32)}, str(f))
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=f"{f}: not a readable safetensors file"):
        read_tensors(f)


# ---- checkpoint and export integrity ---------------------------------------------------------------------------

def _largest_file(root):
    return max((p for p in Path(root).rglob("*") if p.is_file() and p.name != "checksums.json"),
               key=lambda p: p.stat().st_size)


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.fixture()
def tiny_export(tmp_path):
    from make_jax.checkpoint.orbax_io import save_checkpoint
    from make_jax.models import create_model, get_model_config

    cfg = get_model_config("tiny")
    return save_checkpoint(tmp_path / "export", create_model(cfg, seed=0), cfg)


def test_a_flipped_bit_in_an_export_is_named_on_load(tiny_export):
    from make_jax.checkpoint.open_clip_layout import CheckpointError
    from make_jax.checkpoint.orbax_io import load_params

    recorded = json.loads((tiny_export / "checksums.json").read_text())["files"]
    assert {"model_config.json", "preprocess_cfg.json"} <= set(recorded)
    assert sum(name.startswith("params/") for name in recorded) >= 2
    load_params(tiny_export, as_numpy=True)  # intact: loads
    victim = _largest_file(tiny_export)
    _flip(victim, 4096)
    with pytest.raises(CheckpointError, match=f"{victim}: checksum mismatch"):
        load_params(tiny_export, as_numpy=True)


def test_a_truncated_export_is_one_clear_error_even_without_checksums(tiny_export):
    from make_jax.checkpoint.open_clip_layout import CheckpointError
    from make_jax.checkpoint.orbax_io import load_params

    victim = _largest_file(tiny_export)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_params(tiny_export, as_numpy=True)
    (tiny_export / "checksums.json").unlink()  # an export written before checksums: Orbax's error, in one line
    with pytest.raises(CheckpointError, match="cannot be restored|unreadable checkpoint") as e:
        load_params(tiny_export, as_numpy=True)
    assert "\n" not in str(e.value)


def test_a_damaged_training_checkpoint_is_named_before_restore(tmp_path):
    import jax
    import numpy as np

    from make_jax.checkpoint.open_clip_layout import CheckpointError
    from make_jax.train.checkpointing import TrainCheckpoints, abstract_like

    state = {"w": jax.numpy.asarray(np.arange(4096, dtype=np.float32)), "step": jax.numpy.asarray(3)}
    ckpts = TrainCheckpoints(tmp_path / "ck")
    ckpts.save(3, state, {"epoch": 1}, {"lr": 1.0})
    restored, data, _ = ckpts.restore(3, abstract_like(state))
    np.testing.assert_array_equal(np.asarray(restored["w"]), np.asarray(state["w"]))
    victim = _largest_file(tmp_path / "ck" / "3")
    _flip(victim, 100)
    with pytest.raises(CheckpointError, match=f"{victim}: checksum mismatch"):
        ckpts.restore(3, abstract_like(state))
    ckpts.close()


def test_exports_get_the_users_permissions_not_mkdtemps(tmp_path):
    import stat

    from make_jax.atomic_io import write_text_atomic
    from make_jax.checkpoint.orbax_io import save_checkpoint
    from make_jax.models import create_model, get_model_config

    old = os.umask(0o022)
    try:
        cfg = get_model_config("tiny")
        out = save_checkpoint(tmp_path / "export", create_model(cfg, seed=0), cfg)
        results = write_text_atomic(tmp_path / "results.json", "{}\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "model_config.json").stat().st_mode) == 0o644
    assert stat.S_IMODE(results.stat().st_mode) == 0o644


# ---- tables: encoding, paths, reproducible rejects ------------------------------------------------------------

def test_a_latin1_table_is_refused_naming_line_and_offset_unless_encoding_is_given(tmp_path):
    from make_jax.records.csv_io import TableError, TableReader

    text = "filename,caption\na.png,plain\nb.png,eczéma of the hand\n"
    f = tmp_path / "t.csv"
    f.write_bytes(text.encode("latin-1"))
    offset = text.encode("latin-1").index("é".encode("latin-1"))
    with pytest.raises(TableError, match=rf"{f}: not valid utf-8 text at line 3, byte offset {offset} "):
        TableReader(f)
    with TableReader(f, encoding="latin-1") as reader:
        assert [r.values["caption"] for r in reader] == ["plain", "eczéma of the hand"]
    f.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))  # UTF-8 with a byte-order mark reads as before
    with TableReader(f) as reader:
        assert reader.fieldnames == ["filename", "caption"]
        assert [r.values["caption"] for r in reader][1] == "eczéma of the hand"


def _golden(tmp_path, n=2):
    import csv as _csv

    from PIL import Image

    with open(REPO / "tests" / "golden" / "MAKE_training_example.csv", newline="", encoding="utf-8") as fh:
        rows = list(_csv.DictReader(fh))[:n]
    root = tmp_path / "images"
    for i, r in enumerate(rows):
        r["filename"] = f"/img/{i}.png"
        (root / "img").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40 + i, 40), (30 * i, 90, 120)).save(root / "img" / f"{i}.png")
    return rows, root


def _write(path, rows):
    import csv as _csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = _csv.DictWriter(fh, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return str(path)


def _convert(csv_path, root, out, **kw):
    from make_jax.records.convert import convert

    return convert(str(csv_path), str(root), str(out), workers=0, shorter_side=32, progress=False,
                   log=lambda s: None, **kw)


def test_paths_leaving_the_image_root_are_rejected_unless_allowed(tmp_path):
    import csv as _csv

    rows, root = _golden(tmp_path, 4)
    secret = tmp_path / "outside.png"
    (root / "img" / "0.png").rename(secret)
    rows[0]["filename"] = "../outside.png"
    rows[1]["filename"] = str(secret)  # absolute, exists only outside --images
    csv_path = _write(tmp_path / "t.csv", rows)
    res = _convert(csv_path, root, tmp_path / "out")
    with open(res.rejects_csv, newline="", encoding="utf-8") as fh:
        rejects = {int(r["row"]): r["code"] for r in _csv.DictReader(fh)}
    assert rejects == {1: "path_outside_root", 2: "path_outside_root"}
    assert res.splits["train"] == 2  # the two rows under --images (leading '/' = relative to the root)
    res = _convert(csv_path, root, tmp_path / "out2", allow_outside_root=True)
    assert res.splits["train"] == 4


def test_identical_conversions_give_byte_identical_rejects(tmp_path):
    rows, root = _golden(tmp_path, 3)
    (root / "img" / "1.png").write_bytes(b"not an image at all")  # PIL's error names a BytesIO object
    csv_path = _write(tmp_path / "t.csv", rows)
    a = _convert(csv_path, root, tmp_path / "a")
    b = _convert(csv_path, root, tmp_path / "b")
    text = Path(a.rejects_csv).read_bytes()
    assert b"image_unreadable" in text and b" at 0x" not in text
    assert text == Path(b.rejects_csv).read_bytes()


@pytest.mark.parametrize("fault", ["csv_is_a_directory", "csv_not_utf8", "out_is_a_file"])
def test_convert_refuses_a_bad_whole_input_in_one_line(tmp_path, capsys, fault):
    from make_jax.records.convert import main

    rows, root = _golden(tmp_path, 2)
    csv_path = _write(tmp_path / "t.csv", rows)
    out = tmp_path / "out"
    if fault == "csv_is_a_directory":
        csv_path = str(tmp_path)
    elif fault == "csv_not_utf8":
        Path(csv_path).write_bytes(Path(csv_path).read_bytes() + "x,\xe9\n".encode("latin-1"))
    else:
        out.write_text("a file")
    assert main(["--csv", csv_path, "--images", str(root), "--out", str(out), "--workers", "0",
                 "--no-progress"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    want = {"csv_is_a_directory": "is a directory", "csv_not_utf8": "not valid utf-8 text at line 4",
            "out_is_a_file": "--out"}[fault]
    assert want in err[0]


@pytest.mark.parametrize("content, needle", [
    ("[" * 100000 + "]" * 100000, "not valid UTF-8 JSON"),       # RecursionError in the JSON parser
    ('{"a": ' * 200 + '["x"]' + "}" * 200, "nested deeper than"),  # RecursionError in the tree walk
    ('[{"name": ["not", "a", "string"], "path": ["a"]}]', "malformed ontology"),  # TypeError
    ('{"psoriasis": 3}', "malformed ontology"),
])
def test_a_malformed_ontology_is_one_clear_error(tmp_path, content, needle):
    from make_jax.errors import InputError
    from make_jax.knowledge.lexicon import Ontology

    f = tmp_path / "ontology.json"
    f.write_text(content)
    with pytest.raises(InputError, match=needle) as e:
        Ontology.from_json(f)
    assert str(f) in str(e.value) and "\n" not in str(e.value)


def test_knowledge_checks_its_outputs_before_the_work(tmp_path, capsys):
    from make_jax.knowledge.builder import main

    rows, _ = _golden(tmp_path, 2)
    csv_path = _write(tmp_path / "t.csv", rows)
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    assert main([csv_path, "-o", str(blocker / "out.csv"), "--extractor", "none", "--no-progress", "-q"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and ("not writable" in err[0] or "is a file" in err[0]), err


# ---- the API key never leaks ---------------------------------------------------------------------------------

def test_the_api_key_is_redacted_at_every_offset_of_an_error_body():
    import io
    import urllib.error

    from make_jax.knowledge.llm_extract import ChatClient, LLMConfig, LLMError

    key = "sk-test-9f8e7d6c5b4a39281706"
    client = ChatClient(LLMConfig(base_url="http://127.0.0.1:9", model="m", api_key=key, max_retries=0),
                        sleep=lambda s: None)
    for offset in range(260):  # across the 120-character cut of the message and the old 200-byte read
        body = ("x" * offset + key + " y" * 50).encode()

        def refuse(req, timeout, body=body):
            raise urllib.error.HTTPError(req.full_url, 401, "Unauthorized", {}, io.BytesIO(body))

        client._opener.open = refuse
        with pytest.raises(LLMError) as e:
            client.complete([{"role": "user", "content": "hi"}])
        message = str(e.value)
        assert "HTTP 401" in message
        assert not any(key[:k] in message for k in range(4, len(key) + 1)), (offset, message)


def test_one_handler_per_command_turns_project_errors_into_one_line_and_keeps_bugs(capsys):
    from make_jax.errors import InputError, Interrupted, exit_on_input_error

    with pytest.raises(SystemExit) as e:
        with exit_on_input_error("cmd"):
            raise InputError("config.x: bad\nsecond line")
    assert e.value.code == 2
    assert capsys.readouterr().err == "cmd: error: config.x: bad; second line\n"
    with pytest.raises(SystemExit) as e:
        with exit_on_input_error("cmd"):
            raise Interrupted("stopped at step 2 of 6; checkpoint saved")
    assert e.value.code == 130 and capsys.readouterr().err.count("\n") == 1
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        with exit_on_input_error("cmd"):
            1 / 0
