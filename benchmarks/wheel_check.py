"""What the GPU machine has, and whether `.whl/` fills the gaps (used by benchmarks/wheelhouse.sh).

    python benchmarks/wheel_check.py .whl                 # closure + size + one-version check of the wheelhouse
    GPU_SUITE_IMAGE_ONLY=.whl python benchmarks/gpu_suite.py --dry-run --out DIR
                                                          # the dry run with every import outside the GPU image
                                                          # and the wheelhouse refused (ModuleNotFoundError)

`GPU_IMAGE`: the Python distributions of the device machine's image ('cuda'), as listed in the workplace's
device notes (KINDS.md, read 2026-11-17): Python 3.12, jax 0.11.2 (CUDA 13), torch 2.11, flax, optax, orbax…
"""

from __future__ import annotations

import os
import re
import sys
import zipfile

GPU_IMAGE = set("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
wrapt xarray xxhash yarl zipp
""".split())

TARGET_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
LIMIT_BYTES = 64 * 2**20  # what the device tool carries in all, the working tree included


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_metadata(path: str) -> tuple[str, str, list[str]]:
    """(name, version, base requirements) of a wheel file, base = not behind an extra."""
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode("utf-8")
    name = re.search(r"^Name: (.+)$", text, re.M).group(1).strip()
    version = re.search(r"^Version: (.+)$", text, re.M).group(1).strip()
    reqs = [m.group(1).strip() for m in re.finditer(r"^Requires-Dist: (.+)$", text, re.M)]
    return name, version, reqs


def check(folder: str) -> list[str]:
    """Problems of the wheelhouse (empty = fine): requirements that neither the image nor a wheel provides,
    two versions of one package, more than the carry limit."""
    from packaging.requirements import Requirement

    wheels = sorted(f for f in os.listdir(folder) if f.endswith(".whl"))
    problems, have = [], {}
    for f in wheels:
        name, version, _ = wheel_metadata(os.path.join(folder, f))
        if norm(name) in have:
            problems.append(f"two versions of {name}: {have[norm(name)][1]} and {version} (the install would fail)")
        have[norm(name)] = (f, version)
    for f in wheels:
        name, _, reqs = wheel_metadata(os.path.join(folder, f))
        for spec in reqs:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate(TARGET_ENV):
                continue  # behind an extra or for another platform / Python
            n = norm(req.name)
            if n not in have and n not in GPU_IMAGE:
                problems.append(f"{name} needs {req}: neither in the GPU image nor in {folder}")
            elif n in have and req.specifier and not req.specifier.contains(have[n][1], prereleases=True):
                problems.append(f"{name} needs {req}, {folder} has {have[n][1]}")
    total = sum(os.path.getsize(os.path.join(folder, f)) for f in wheels)
    if total > LIMIT_BYTES:
        problems.append(f"{folder} holds {total / 2**20:.1f} MiB, over the {LIMIT_BYTES / 2**20:.0f} MiB carry limit")
    print(f"{len(wheels)} wheels, {total / 2**20:.1f} MiB")
    return problems


def allowed_distributions(folder: str) -> set[str]:
    names = {norm(wheel_metadata(os.path.join(folder, f))[0]) for f in os.listdir(folder) if f.endswith(".whl")}
    return GPU_IMAGE | names


class ImageOnlyFinder:
    """A meta-path finder refusing top-level imports whose installed distributions are all outside `allowed`
    (stdlib and the repository's own packages belong to no distribution and pass)."""

    def __init__(self, allowed: set[str]):
        from importlib.metadata import packages_distributions

        self.allowed = allowed
        self.owner = packages_distributions()

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        dists = self.owner.get(top)
        if dists and not any(norm(d) in self.allowed for d in dists):
            raise ModuleNotFoundError(f"{top} (from {', '.join(dists)}) is neither in the GPU image nor in the "
                                      f"wheelhouse", name=name)
        return None


def guard_from_env() -> None:
    """Installs `ImageOnlyFinder` when GPU_SUITE_IMAGE_ONLY names a wheelhouse folder (inherited by children)."""
    folder = os.environ.get("GPU_SUITE_IMAGE_ONLY")
    if folder:
        sys.meta_path.insert(0, ImageOnlyFinder(allowed_distributions(folder)))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not os.path.isdir(argv[0]):
        print("usage: python benchmarks/wheel_check.py WHEEL_FOLDER", file=sys.stderr)
        return 2
    problems = check(argv[0])
    for p in problems:
        print(f"wheel_check: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
