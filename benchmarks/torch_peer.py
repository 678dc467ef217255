"""The PyTorch peer of the GPU suite: the public MAKE code's training step as it runs, rebuilt for timing.

What the public code (github.com/SiyuanYan1/MAKE, an open_clip fork; docs/objectives.md §5) does per step, and what is
rebuilt here, written from the spec and from reading that code (not copied):

- model: open_clip ``ViT-B-16`` (on the GPU machine, from the open_clip_torch wheel) — or, where open_clip is
  not installed (the CPU dry run and tests), `MiniCLIP`, a small model with the same interface and layout
  (``visual(x)`` → (pooled, tokens) with ``output_tokens``, ``visual.proj``, ``encode_text``, ``logit_scale``);
- forward: image CLS and patch tokens (patches through ``ln_post`` and the same ``proj``), all B·N texts at
  77 tokens (dense, N = 11 slots, sample-major: row r = i·N + n), everything L2-normalised;
- `knowledge_embedding`: the (B, P, B·N) patch–text similarity, its [i, :, i] diagonal (text ROW i for image i),
  threshold σ = 0, L2-normalised over patches, weighted sum of patches (not re-normalised);
- `official_make_loss`: MKCLLoss as the public code runs it (--local-loss, world size 1, λ_m = 1, λ_s = 0.7,
  --use_disease_specific_weight): (B·N)×(B·N) "expanded" logits for i2t and slra, class-weighted cross-entropy,
  label vectors built by per-row ``.item()`` loops on the host (``host_loops=True``, as the public code does);
- step: fp16 autocast + GradScaler, AdamW, ``logit_scale`` clamped to [0, ln 100] after the update.

`tests/test_gpu_suite.py` checks that `official_make_loss` + `knowledge_embedding` equal make_jax's official
mode (``LossConfig(mode="official")``) on a small batch, in float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE = -100
LOGIT_SCALE_MAX = math.log(100.0)


# ---- the public code's maths ---------------------------------------------------------------------------------

def knowledge_embedding(patches: torch.Tensor, text: torch.Tensor, sigma: float = 0.0) -> torch.Tensor:
    """patches (B, P, D), text (B·N, D), both L2-normalised → e^k (B, D), as the public ``CLIP.forward``.

    The full (B, P, B·N) similarity is built (as the public code does; this is its memory cost), then only
    the [i, :, i] diagonal is used: image i is weighted by text ROW i."""
    b = patches.shape[0]
    sim = patches @ text.T  # (B, P, T)
    sim = torch.where(sim >= sigma, sim, torch.zeros((), dtype=sim.dtype, device=sim.device))
    idx = torch.arange(b, device=patches.device)
    w = F.normalize(sim[idx, :, idx], dim=-1)  # (B, P)
    return (w.unsqueeze(-1) * patches).sum(1)


def _labels(mask_1d: torch.Tensor, num_slots: int, host_loops: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """i2t labels (row r → class r, -100 where invalid) and t2i labels (row r → image r // N, -100 where
    invalid). With ``host_loops`` they are built one row at a time with ``.item()`` (a device sync per row),
    as the public code builds them; otherwise vectorised (same values)."""
    t = mask_1d.shape[0]
    device = mask_1d.device
    if host_loops:
        i2t = torch.arange(t, device=device)
        for r in range(t):
            if mask_1d[r].item() < 0.5:
                i2t[r] = IGNORE
        t2i = torch.empty(t, device=device, dtype=torch.long)
        for r in range(t):
            t2i[r] = IGNORE if mask_1d[r].item() < 0.5 else r // num_slots
        return i2t, t2i
    rows = torch.arange(t, device=device)
    valid = mask_1d >= 0.5
    ignore = torch.full_like(rows, IGNORE)
    return torch.where(valid, rows, ignore), torch.where(valid, rows // num_slots, ignore)


def dkw_weights(text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The public ``subcaption_similarity_1d`` (B·N,), detached: texts read as if caption-major, so image i's
    subtext weights compare rows B+i and (3+k)·B+i (docs/objectives.md §5); softmax then divided by its max; 1 where
    the disease slot is invalid; 1 for slots 0-2."""
    b, n = mask.shape
    chunks = torch.chunk(text, n, dim=0)
    sub = torch.cat(chunks[3:], dim=0)
    sim = (chunks[1] @ sub.T).reshape(b, n - 3, b)
    idx = torch.arange(b, device=text.device)
    sim = sim[idx, :, idx]  # (B, N-3)
    sim = sim.masked_fill(mask[:, 3:] == 0, float("-inf")).softmax(dim=-1)
    sim = sim / sim.max(dim=1, keepdim=True).values
    sim = sim.masked_fill((mask[:, 1:2] == 0).expand_as(sim), 1.0)
    ones = torch.ones(b, 3, device=text.device, dtype=sim.dtype)
    return torch.cat([ones, sim], dim=1).reshape(-1).detach()


def official_make_loss(ek: torch.Tensor, image: torch.Tensor, text: torch.Tensor, mask: torch.Tensor,
                       scale: torch.Tensor, lambda_m: float = 1.0, lambda_s: float = 0.7, dkw: bool = True,
                       host_loops: bool = True) -> dict:
    """MKCLLoss.forward of the public code. ek, image (B, D); text (B·N, D) sample-major; mask (B, N) 0/1;
    scale = exp(logit_scale). Returns {"mkcl": λ_m·L_mkcl, "slra": λ_s·L_slra, "loss": their sum}."""
    b, n = mask.shape
    t = b * n
    weight = dkw_weights(text, mask) if dkw else None
    logits_image = scale * image @ text.T  # (B, T)
    logits_sgl = scale * ek @ text.T  # (B, T)
    logits_text = scale * text @ image.T  # (T, B)
    # (T, T) "expanded" logits: each image's row repeated for its N texts
    expanded_i2t = logits_image.unsqueeze(1).expand(-1, n, -1).reshape(t, t)
    expanded_sgl = logits_sgl.unsqueeze(1).expand(-1, n, -1).reshape(t, t)
    labels_i2t, labels_t2i = _labels(mask.reshape(-1), n, host_loops)
    loss_i2t = F.cross_entropy(expanded_i2t, labels_i2t, ignore_index=IGNORE, weight=weight)
    labels_sgl = labels_i2t.clone()
    labels_sgl[:b] = IGNORE  # rows 0..B-1, not a slot: the public code's quirk
    slra = F.cross_entropy(expanded_sgl, labels_sgl, ignore_index=IGNORE, weight=weight)
    loss_t2i = F.cross_entropy(logits_text, labels_t2i, ignore_index=IGNORE)
    mkcl = 0.5 * (loss_i2t + loss_t2i)
    return {"mkcl": lambda_m * mkcl, "slra": lambda_s * slra, "loss": lambda_m * mkcl + lambda_s * slra}


# ---- the model -----------------------------------------------------------------------------------------------

class _Block(nn.Module):
    """Pre-LN residual attention block (open_clip ``ResidualAttentionBlock``), GELU MLP."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x, attn_mask=None):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class _Visual(nn.Module):
    def __init__(self, image_size: int, patch: int, width: int, layers: int, heads: int, embed_dim: int):
        super().__init__()
        self.output_tokens = False
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(0.02 * torch.randn(width))
        self.positional_embedding = nn.Parameter(0.02 * torch.randn((image_size // patch) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.blocks = nn.ModuleList(_Block(width, heads) for _ in range(layers))
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(width ** -0.5 * torch.randn(width, embed_dim))

    def forward(self, x):
        x = self.conv1(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1).to(x.dtype), x], 1)
        x = self.ln_pre(x + self.positional_embedding.to(x.dtype))
        for blk in self.blocks:
            x = blk(x)
        x = self.ln_post(x)  # open_clip (final_ln_after_pool=False): ln_post on every token, then pool
        pooled, tokens = x[:, 0] @ self.proj, x[:, 1:]
        return (pooled, tokens) if self.output_tokens else pooled


class MiniCLIP(nn.Module):
    """A small open_clip-shaped CLIP for CPU runs of the peer (same interface as ``open_clip.CLIP``)."""

    def __init__(self, image_size: int = 32, patch: int = 8, v_width: int = 64, t_width: int = 64, layers: int = 2,
                 heads: int = 4, embed_dim: int = 32, context: int = 77, vocab: int = 49408):
        super().__init__()
        self.visual = _Visual(image_size, patch, v_width, layers, heads, embed_dim)
        self.token_embedding = nn.Embedding(vocab, t_width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(context, t_width))
        self.blocks = nn.ModuleList(_Block(t_width, heads) for _ in range(layers))
        self.ln_final = nn.LayerNorm(t_width)
        self.text_projection = nn.Parameter(t_width ** -0.5 * torch.randn(t_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.register_buffer("attn_mask", torch.full((context, context), float("-inf")).triu_(1), persistent=False)

    def encode_text(self, ids):
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]
        mask = self.attn_mask[: ids.shape[1], : ids.shape[1]]
        for blk in self.blocks:
            x = blk(x, attn_mask=mask)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0], device=ids.device), ids.argmax(-1)] @ self.text_projection


def make_peer_model(model: str):
    """('ViT-B-16' on the GPU machine → open_clip's ViT-B-16, QuickGELU variant where the installed open_clip
    has it; anything else → `MiniCLIP`). Returns (model, description)."""
    if model == "ViT-B-16":
        import open_clip  # the open_clip_torch wheel; ImportError is reported as the run's error

        names = open_clip.list_models()
        name = "ViT-B-16-quickgelu" if "ViT-B-16-quickgelu" in names else "ViT-B-16"
        m = open_clip.create_model(name, pretrained=None)
        return m, f"open_clip {open_clip.__version__} {name}"
    return MiniCLIP(), "MiniCLIP (open_clip-shaped, CPU dry run)"


def features(model, images: torch.Tensor, texts: torch.Tensor):
    """(image (B, D), patches (B, P, D), text (B·N, D)), L2-normalised, from images (B, 3, H, W) and texts
    (B, N, L), as the public model's forward (patch tokens through the same ``proj``)."""
    model.visual.output_tokens = True
    pooled, tokens = model.visual(images)
    image = F.normalize(pooled, dim=-1)
    patches = F.normalize(tokens @ model.visual.proj, dim=-1)
    text = F.normalize(model.encode_text(texts.reshape(-1, texts.shape[-1])), dim=-1)
    return image, patches, text


def make_peer_step(model, dtype: str, device: str, lr: float = 1e-4, host_loops: bool = True):
    """The public training step → step(images, texts, mask) -> loss (a tensor). dtype 'float16' (the public
    code's amp: autocast + GradScaler), 'bfloat16' (autocast, no scaler) or 'float32'."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    amp = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(dtype)
    scaler = torch.amp.GradScaler(device, enabled=amp is torch.float16)

    def step(images, texts, mask):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=amp or torch.float32, enabled=amp is not None):
            image, patches, text = features(model, images, texts)
            ek = knowledge_embedding(patches, text)
            loss = official_make_loss(ek, image, text, mask, model.logit_scale.exp(), host_loops=host_loops)["loss"]
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        with torch.no_grad():
            model.logit_scale.clamp_(0, LOGIT_SCALE_MAX)
        return loss.detach()

    return step
