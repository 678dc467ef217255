"""The installable package: `pip install .` into a fresh venv (the test environment's site-packages made visible
through a .pth file, so that nothing is downloaded), then its console commands run from a folder outside the
checkout — an evaluation config by name, the training help — and `launch.py --help` in the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ["make_jax", "configs", "launch.py", "pyproject.toml", "requirements.txt", "README.md"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    return {**env, "JAX_PLATFORMS": "cpu", **extra}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv bin dir, a work folder outside the checkout). The source is copied first so that the build leaves
    nothing (build/, *.egg-info) in the checkout."""
    root = tmp_path_factory.mktemp("pkg")
    src = root / "src"
    src.mkdir()
    for name in SHIPPED:
        p = REPO / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(p, src / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)  # pip: this env's
    # `--system-site-packages` would expose the base interpreter's packages, not this environment's: a .pth file
    # appends this environment's site-packages after the venv's own (so the installed make_jax comes first).
    site = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                        "--no-index", "-q", str(src)], capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    work = root / "elsewhere"
    work.mkdir()
    return venv / "bin", work


def test_installed_package_runs_an_eval_config_by_name(installed):
    bin_dir, work = installed
    where = subprocess.run([str(bin_dir / "python"), "-c", "import make_jax, configs; print(make_jax.__file__); "
                            "print(configs.__file__)"], capture_output=True, text=True, cwd=work, env=_env())
    assert where.returncode == 0, where.stderr
    assert all("site-packages" in line and str(REPO) not in line for line in where.stdout.split())
    gen = subprocess.run([str(bin_dir / "make-jax-synthderm"), "--out", "sd", "--num-train", "0", "--num-val", "0",
                          "--num-zeroshot", "16", "--num-concepts", "12", "--num-retrieval", "6", "--image-size", "32",
                          "--quiet"], capture_output=True, text=True, cwd=work, env=_env())
    assert gen.returncode == 0, gen.stderr[-2000:]
    ev = subprocess.run([str(bin_dir / "make-jax-eval"), "--random-init", "tiny", "--config", "eval_synthderm:sd",
                         "--no-progress", "--out", "sd.json"], capture_output=True, text=True, cwd=work, env=_env())
    assert ev.returncode == 0, ev.stderr[-3000:]
    res = json.loads((work / "sd.json").read_text())
    assert [r["name"] for r in res["results"]] == ["synthderm-zeroshot", "synthderm-concepts", "synthderm-retrieval"]
    assert all("error" not in r for r in res["results"])
    bad = subprocess.run([str(bin_dir / "make-jax-eval"), "--random-init", "tiny", "--config", "eval_nothing"],
                         capture_output=True, text=True, cwd=work, env=_env())
    assert bad.returncode == 2 and "no packaged config of that name (known: ablation, demo, eval_paper" in bad.stderr
    for cmd in ("make-jax-train", "make-jax-convert", "make-jax-records", "make-jax-knowledge", "make-jax-report",
                "make-jax-merge"):
        assert (bin_dir / cmd).is_file(), cmd


def test_installed_train_help_lists_config_fields(installed):
    bin_dir, work = installed
    r = subprocess.run([str(bin_dir / "make-jax-train"), "--help", "--config", "ablation:make"], capture_output=True,
                       text=True, cwd=work, env=_env())
    assert r.returncode == 0, r.stderr[-2000:]
    assert "config fields of ablation:make with their defaults" in r.stdout
    assert "  loss.sigma = 0.0" in r.stdout and "--workdir" in r.stdout
    # The command itself, not only its help: launch.py is not installed, and the library must not need it.
    r = subprocess.run([str(bin_dir / "make-jax-train"), "--config", "ablation:row=mkcl", "--config.batch_size=3",
                        "--print_config"], capture_output=True, text=True, cwd=work, env=_env())
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["batch_size"] == 3 and json.loads(r.stdout)["row"] == "mkcl"
    bad = subprocess.run([str(bin_dir / "make-jax-train"), "--config", "demo", "--config.no_such=1"],
                         capture_output=True, text=True, cwd=work, env=_env())
    # errors name the command that was run (the wheel has no launch.py)
    assert bad.returncode == 2 and bad.stderr.startswith("make-jax-train: error: unknown config field 'no_such'")


def test_launch_help_exits_zero_with_the_fields():
    r = subprocess.run([sys.executable, str(REPO / "launch.py"), "--help"], capture_output=True, text=True,
                       cwd="/", env=_env())
    assert r.returncode == 0, r.stderr[-2000:]
    assert "config fields of demo with their defaults" in r.stdout and "  batch_size = " in r.stdout
    bad = subprocess.run([sys.executable, str(REPO / "launch.py"), "--config", "demo", "--config.no_such=1"],
                         capture_output=True, text=True, cwd="/", env=_env())
    assert bad.returncode == 2 and bad.stderr.startswith("launch.py: error: unknown config field 'no_such'")


def test_config_names_in_launch_argv():
    from make_jax.train.cli import prepare_argv

    demo = str(REPO / "configs" / "demo.py")
    assert prepare_argv(["launch.py", "--config", "demo", "--workdir", "w"]) == ["launch.py", "--config", demo,
                                                                                 "--workdir", "w"]
    # absl keeps the last --config: that is the one resolved; an unknown name is left for launch.py to report
    assert prepare_argv(["x", "--config=nope", "--config=ablation:row=make"])[2] == \
        f"--config={REPO / 'configs' / 'ablation.py'}:row=make"
    assert prepare_argv(["x", "--config=configs/no_such.py"]) == ["x", "--config=configs/no_such.py"]


def test_test_extra_pins_what_requirements_test_pins():
    """`pip install .[test]` gets the test environment of `pip install -r requirements-test.txt`: the same pins,
    pytest-xdist included (pyproject's addopts pass `--dist`, which pytest refuses without it)."""
    import tomllib

    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    lines = [ln.strip() for ln in (REPO / "requirements-test.txt").read_text().splitlines()]
    pins = [ln for ln in lines if ln and not ln.startswith(("#", "-r"))]
    assert sorted(extra) == sorted(pins)
