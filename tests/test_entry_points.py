"""The commands users run, end to end in subprocesses: `launch.py` (a plain training run) and
`python -m make_jax.evaluate` (`--random-init`, `--format json`, and `--config configs/eval_paper.py` on the paper's
data layout built from SynthDerm). The maths behind them is tested in the task and training modules; these tests
check that the commands reach it and write what they promise."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import synthderm_small_prepare

REPO = Path(__file__).resolve().parents[1]


def _run(args, timeout=900):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=timeout)


def test_launch_plain_run_trains_exports_and_evaluates(synthderm_small, tmp_path):
    root, records = synthderm_small
    work = tmp_path / "run"
    proc = _run(["launch.py", "--config", "configs/demo.py", "--workdir", str(work),
                 *(f"--config.prepare.synthderm.{k}={v}" for k, v in synthderm_small_prepare(root).items()),
                 f"--config.evals.zeroshot.csv={root / 'zeroshot' / 'test.csv'}",
                 f"--config.evals.zeroshot.classes={root / 'zeroshot' / 'classnames.json'}",
                 f"--config.evals.concepts.data_dir={root / 'skincon'}",
                 f"--config.evals.retrieval.csv={root / 'retrieval' / 'retrieval.csv'}",
                 "--config.data.image_size=32", "--config.data.context_length=16", "--config.data.prefetch=0",
                 "--config.batch_size=8", "--config.total_steps=2", "--config.checkpoint_every=2",
                 "--config.log_every=1", "--config.evals.zeroshot.every=0", "--config.eval_batch_size=16",
                 "--config.progress=False", "--config.tensorboard=True"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):proc.stdout.rindex("}") + 1])
    assert summary["step"] == 2 and Path(summary["export"]).is_dir()
    assert (Path(summary["export"]) / "model_config.json").is_file()
    saved = json.loads((work / "config.json").read_text())
    assert saved["data"]["records"] == records and saved["total_steps"] == 2 and saved["model"]["name"] == "tiny"
    lines = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in lines if m["split"] == "train"]
    assert [m["step"] for m in train] == [1, 2] and all(m["loss"] > 0 for m in train)
    assert summary["final"]["loss"] == round(train[-1]["loss"], 5)
    assert list((work / "tb").glob("events.out.tfevents.*"))
    final = {r["task"]: r for r in json.loads((work / "eval.json").read_text())["results"]}
    assert set(final) == {"zero_shot", "concepts", "retrieval"}
    headline = {r["task"]: r for r in summary["eval"]}
    assert headline["zero_shot"]["top1"] == final["zero_shot"]["metrics"]["top1"]


def _paper_layout(root: Path, out: Path) -> Path:
    """SynthDerm's held-out sets in the layout configs/eval_paper.py reads (docs/evaluation.md): the zero-shot
    images under each of PAD/F17K/SNU-134/SD-128 with labels folded into that preset's class count, SkinCon and
    Derm7pt as copies of SynthDerm's concept set, SkinCAP from its retrieval set with the caption column renamed."""
    with open(root / "zeroshot" / "test.csv", newline="", encoding="utf-8") as f:
        zs = list(csv.DictReader(f))
    for name, classes in (("PAD", 6), ("F17K", 113), ("SNU-134", 134), ("SD-128", 128)):
        (out / name).mkdir(parents=True)
        shutil.copytree(root / "zeroshot" / "images", out / name / "images")
        with open(out / name / "test.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["filename", "label"])
            w.writerows([Path(r["filename"]).name, int(r["label"]) % classes] for r in zs)
    shutil.copytree(root / "skincon", out / "skincon")
    shutil.copytree(root / "skincon", out / "derm7pt")
    with open(root / "retrieval" / "retrieval.csv", newline="", encoding="utf-8") as f:
        rt = list(csv.DictReader(f))
    (out / "skincap").mkdir()
    shutil.copytree(root / "retrieval" / "images", out / "skincap" / "images")
    with open(out / "skincap" / "skincap.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["filename", "caption_zh_polish_en"])
        w.writerows([Path(r["filename"]).name, r["caption"]] for r in rt)
    return out


def test_evaluate_paper_config_on_the_paper_layout_with_random_init(synthderm_small, tmp_path):
    root, _ = synthderm_small
    data = _paper_layout(root, tmp_path / "eval")
    out = tmp_path / "paper.json"
    proc = _run(["-m", "make_jax.evaluate", "--random-init", "tiny", "--config", f"configs/eval_paper.py:{data}",
                 "--out", str(out), "--no-progress", "--batch-size", "16"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(out.read_text())
    assert res["random_init"] == "tiny" and res["checkpoint"] is None
    by = {r["name"]: r for r in res["results"]}
    assert list(by) == ["PAD", "F17K", "SNU-134", "SD-128", "SkinCon", "Derm7pt", "SkinCAP"]
    n_zs = sum(1 for _ in open(root / "zeroshot" / "test.csv")) - 1
    for name in ("PAD", "F17K", "SNU-134", "SD-128"):
        assert by[name]["dataset"]["evaluated"] == n_zs and 0 <= by[name]["metrics"]["top1"] <= 1, name
    assert by["SkinCon"]["metrics"]["mean_auroc"] == by["Derm7pt"]["metrics"]["mean_auroc"]  # the same data
    # every set is compared with the paper's number in the summary
    summary = {s["name"]: s for s in res["summary"]}
    assert summary["PAD"]["published"] == {"top1": 0.5953}
    assert summary["SkinCAP"]["published"] == {"i2t_R@10": 0.2096, "t2i_R@10": 0.1995}
    assert "PAD" in proc.stdout and "published" in proc.stdout  # the table form of the summary


def test_evaluate_single_task_prints_json(synthderm_small, tmp_path):
    root, _ = synthderm_small
    args = ["-m", "make_jax.evaluate", "--random-init", "tiny", "--seed", "3", "--task", "zero_shot",
            "--csv", str(root / "zeroshot" / "test.csv"), "--classes", str(root / "zeroshot" / "classnames.json"),
            "--no-progress", "--batch-size", "16", "--format", "json", "--out", str(tmp_path / "zs.json")]
    proc = _run(args)
    assert proc.returncode == 0, proc.stderr[-4000:]
    printed = json.loads(proc.stdout)  # stdout is exactly one JSON document
    saved = json.loads((tmp_path / "zs.json").read_text())
    assert printed["task"] == "zero_shot" and printed["random_init"] == "tiny"
    assert printed["metrics"] == saved["metrics"]
    n_classes = json.loads((root / "zeroshot" / "classnames.json").read_text())["num_classes"]
    confusion = printed["metrics"]["confusion_matrix"]
    assert len(confusion) == n_classes and sum(map(sum, confusion)) == printed["dataset"]["evaluated"]
    # top-1 is the confusion matrix's trace over its total
    assert printed["metrics"]["top1"] == sum(confusion[i][i] for i in range(n_classes)) / sum(map(sum, confusion))


def test_evaluate_config_json_format_prints_one_json_document(synthderm_small, tmp_path, capsys):
    # With a config of several tasks, `--format json` must keep the tables and the summary off stdout, so that
    # `python -m make_jax.evaluate ... --format json | jq` works (it printed the tables first before).
    from make_jax.evaluate.cli import main

    root, _ = synthderm_small
    rc = main(["--random-init", "tiny", "--config", f"{REPO}/configs/eval_synthderm.py:{root}", "--no-progress",
               "--batch-size", "16", "--format", "json", "--out", str(tmp_path / "sd.json")])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)  # raises if anything but one JSON document was printed
    saved = json.loads((tmp_path / "sd.json").read_text())
    assert [r["name"] for r in printed["results"]] == ["synthderm-zeroshot", "synthderm-concepts",
                                                        "synthderm-retrieval"]
    assert printed["summary"] == saved["summary"]
    assert [r["metrics"] for r in printed["results"]] == [r["metrics"] for r in saved["results"]]
