"""Training metrics on disk (metrics.jsonl and TensorBoard event files) and the peak-FLOP table used for MFU."""

import json
import math
import struct

import pytest

from make_jax.train.flops import peak_flops
from make_jax.train.metrics_writer import MetricWriter


def read_tfrecords(path):
    """The records of a TFRecord file: [u64 length][u32 crc][data][u32 crc] each (CRCs not checked here)."""
    out = []
    with open(path, "rb") as f:
        while header := f.read(8):
            (length,) = struct.unpack("<Q", header)
            f.read(4)
            out.append(f.read(length))
            f.read(4)
    return out


def read_scalars(tb_dir):
    """{tag: [(step, value), ...]} from every event file under `tb_dir`, parsed with the Event protobuf."""
    from tensorboardX.proto.event_pb2 import Event

    scalars = {}
    files = sorted(tb_dir.glob("events.out.tfevents.*"))
    assert files, f"no event file in {tb_dir}"
    for path in files:
        for record in read_tfrecords(path):
            event = Event.FromString(record)
            for v in event.summary.value:
                scalars.setdefault(v.tag, []).append((event.step, v.simple_value))
    return scalars


def test_metrics_reach_jsonl_and_tensorboard(tmp_path):
    writer = MetricWriter(tmp_path, tensorboard=True)
    writer.write(1, {"loss": 2.5, "lr": 1e-3})
    writer.write(2, {"loss": 2.25, "lr": 2e-3, "bad": float("nan")})
    writer.write(2, {"zero_shot_top1": 0.375}, prefix="eval")
    writer.close()

    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0] == {"step": 1, "split": "train", "loss": 2.5, "lr": 1e-3}
    assert lines[1]["step"] == 2 and math.isnan(lines[1]["bad"])
    assert lines[2] == {"step": 2, "split": "eval", "zero_shot_top1": 0.375}

    scalars = read_scalars(tmp_path / "tb")
    # TensorBoard stores float32: compare at float32 precision. Non-finite values are not written there.
    assert scalars.keys() == {"train/loss", "train/lr", "eval/zero_shot_top1"}
    assert scalars["train/loss"] == [(1, 2.5), (2, 2.25)]
    assert [s for s, _ in scalars["train/lr"]] == [1, 2]
    assert [v for _, v in scalars["train/lr"]] == pytest.approx([1e-3, 2e-3], rel=1e-6)
    assert scalars["eval/zero_shot_top1"] == [(2, 0.375)]


def test_tensorboard_off_writes_only_jsonl_and_disabled_writes_nothing(tmp_path):
    writer = MetricWriter(tmp_path / "a", tensorboard=False)
    writer.write(1, {"loss": 1.0})
    writer.close()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["metrics.jsonl"]
    off = MetricWriter(tmp_path / "b", enabled=False)  # a non-main process
    off.write(1, {"loss": 1.0})
    off.close()
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("kind, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12),  # H100 SXM dense bf16 (docs/training.md)
    ("NVIDIA H200", 989e12),  # same tensor cores as H100 SXM (docs/training.md)
    ("NVIDIA A100-SXM4-80GB", 312e12),  # A100 dense bf16 datasheet
    ("cpu", None),  # no MFU on CPUs
    ("NVIDIA GeForce RTX 4090", None),  # unknown GPUs: no guess
])
def test_peak_flops_by_device_kind(kind, peak):
    assert peak_flops(kind) == peak
