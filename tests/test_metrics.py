"""Training metrics on disk (metrics.jsonl and TensorBoard event files), the peak-FLOP table, the FLOP count of a
training image and MFU."""

import json
import math
import struct

import pytest

from make_jax.models.config import ModelConfig, TextConfig, VisionConfig
from make_jax.train.flops import model_flops_utilisation, peak_flops, text_forward_flops, train_flops_per_image
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


def test_train_flops_per_image_by_hand_on_a_tiny_config():
    # A config small enough to count every multiply-add by hand (2 FLOPs each; LayerNorm, softmax and the output
    # projections are not counted, as documented in make_jax/train/flops.py).
    # Image tower: 32 px, patch 16 -> 2x2 = 4 patches + CLS = 5 tokens; width D = 8, MLP 4·8 = 32, 2 layers.
    #   per token: q, k, v, out 4·8·8 = 256 MACs; MLP 2·8·32 = 512 MACs -> 768 MACs; x 5 tokens = 3840
    #   attention: scores 5·5·8 = 200 MACs, mixing 5·5·8 = 200 MACs -> 400
    #   per layer 4240 MACs; 2 layers 8480 MACs = 16,960 FLOPs
    #   patch conv: 4 patches x (3·16·16 = 768 inputs) x 8 outputs = 24,576 MACs = 49,152 FLOPs
    #   image forward: 16,960 + 49,152 = 66,112 FLOPs
    # Text tower: width 16, MLP ratio 2 -> 32 (not 4·16: checks the MLP width is read), 1 layer, run at 6 tokens
    # (the `context` argument, not the config's 10).
    #   per token: 4·16·16 = 1024 MACs; MLP 2·16·32 = 1024 MACs -> 2048; x 6 tokens = 12,288
    #   attention: 2·6·6·16 = 1152 MACs; layer 13,440 MACs = 26,880 FLOPs
    #   at the config's 10 tokens: 2048·10 + 2·10·10·16 = 23,680 MACs = 47,360 FLOPs
    # Training, 3 texts per image, forward + backward = 3 x forward: 3·(66,112 + 3·26,880) = 3·146,752 = 440,256.
    cfg = ModelConfig(embed_dim=8, vision=VisionConfig(image_size=32, patch_size=16, width=8, layers=2, heads=2),
                      text=TextConfig(context_length=10, width=16, layers=1, heads=2, mlp_ratio=2.0))
    assert text_forward_flops(cfg) == 47_360
    assert text_forward_flops(cfg, 6) == 26_880
    assert train_flops_per_image(cfg, 3, 6) == 440_256


def test_mfu_by_hand():
    # The spec's ViT-B/16 training cost with 11 texts: 3·(35.13 + 5.96·11) = 3·100.69 = 302.07 GFLOP per image.
    # 1,000 images/s on one H100 (989 TFLOP/s): 1000·302.07e9 / 989e12 = 302.07 / 989 = 0.305430...
    assert model_flops_utilisation(1000.0, 302.07e9, 989e12, 1) == pytest.approx(0.3054297270, rel=1e-9)
    # The same 1,000 images/s (global) over 4 devices: each does a quarter -> 0.305430 / 4 = 0.0763574...
    assert model_flops_utilisation(1000.0, 302.07e9, 989e12, 4) == pytest.approx(0.0763574317, rel=1e-9)
    # 8 A100s (312 TFLOP/s each) at 2,000 images/s of 100 GFLOP: 2e14 / 2.496e15 = 0.0801282...
    assert model_flops_utilisation(2000.0, 100e9, 312e12, 8) == pytest.approx(0.0801282051, rel=1e-9)
