"""LossConfig: the switches of the MAKE objectives (docs/objectives.md §2, Table 3 of the paper)."""

from __future__ import annotations

import dataclasses

from make_jax.data.schema import NUM_KNOWLEDGE, SLOT_RAW

MODES = ("paper", "official")
POSITIVES = ("clip_raw", "clip_dagger", "knowledge", "all")
DKW_NORMS = ("ratio", "softmax")
OBJECTIVES = ("softmax", "sigmoid")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Static configuration of :func:`make_jax.losses.make_loss` (hashable: usable as a jit static arg).

    Defaults are the paper's MAKE row (mkcl + slra + dkw, lambda = 0.7, sigma = 0).

    mode:       'paper' (docs/objectives.md §2, the project default) or 'official' (what the public PyTorch
                code computes, docs/objectives.md §5; needs the dense sample-major layout).
    positives:  which valid text rows are texts at all. 'clip_raw' / 'clip_dagger': slot 0 only
                (for clip_dagger the caller puts the Derm1M-dagger text, raw + disease + concept
                concatenated, at slot 0 — the maths is that of clip_raw); 'knowledge': slots 0-2
                (Table 3 "mkcl#"); 'all': every slot (Table 3 "mkcl"). Rows outside the set are
                treated exactly like invalid rows, in every term.
    slra:       add lambda * L_slra (Eq. 5-6).
    dkw:        diagnosis-guided weights on the subtext rows (Eq. 7).
    slra_lambda: lambda of Eq. 8 (the public code's lambda_s).
    sigma:      patch threshold of Eq. 5 (z kept where z >= sigma); must be >= 0.
    dkw_norm:   'ratio' (paper: g / max g, clamped at 0) or 'softmax' (public code: softmax over
                the image's subtexts divided by its max, i.e. exp(g - max g)). Ignored in official
                mode, which always uses the public code's formula.
    slra_grad_to_raw: whether the slra gradient flows into the text row that builds the patch
                weights (the raw caption in paper mode; text row i in official mode).
    eps:        epsilon of e^k = sum_n v z / (sum_n z + eps) (paper mode).
    objective:  'softmax' (CLIP / MKCL contrastive, the default) or 'sigmoid' (the SigLIP pairwise loss of the
                paper's SigLIP baselines, make_jax/losses/siglip.py; needs the model's learnable
                ``logit_bias``, paper mode, a clip_* positives set, and slra = dkw = False).
    """

    mode: str = "paper"
    positives: str = "all"
    slra: bool = True
    dkw: bool = True
    slra_lambda: float = 0.7
    sigma: float = 0.0
    dkw_norm: str = "ratio"
    slra_grad_to_raw: bool = True
    eps: float = 1e-6
    objective: str = "softmax"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.positives not in POSITIVES:
            raise ValueError(f"positives must be one of {POSITIVES}, got {self.positives!r}")
        if self.dkw_norm not in DKW_NORMS:
            raise ValueError(f"dkw_norm must be one of {DKW_NORMS}, got {self.dkw_norm!r}")
        if not self.sigma >= 0.0:
            raise ValueError(f"sigma must be >= 0 (a negative threshold can make sum z <= 0), got {self.sigma}")
        if not self.eps >= 0.0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")
        if not self.slra_lambda >= 0.0:
            raise ValueError(f"slra_lambda must be >= 0, got {self.slra_lambda}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.objective == "sigmoid" and (self.mode != "paper" or not self.is_clip or self.slra or self.dkw):
            raise ValueError("objective='sigmoid' (SigLIP) is a CLIP baseline: it needs mode='paper', positives "
                             "'clip_raw' or 'clip_dagger', slra=False and dkw=False")

    @property
    def is_clip(self) -> bool:
        return self.positives in ("clip_raw", "clip_dagger")

    @property
    def max_slot(self) -> int | None:
        """Highest slot that counts as a text (None: every slot)."""
        if self.is_clip:
            return SLOT_RAW
        if self.positives == "knowledge":
            return NUM_KNOWLEDGE - 1
        return None

    def slots_used(self, num_slots: int) -> int:
        """How many leading text slots of N can be texts: encoding the others would be wasted work."""
        return num_slots if self.max_slot is None else min(self.max_slot + 1, num_slots)


# Table 3 of the paper, row by row, as configurations (paper mode).
TABLE3 = {
    "clip": LossConfig(positives="clip_raw", slra=False, dkw=False),
    "clip_dagger": LossConfig(positives="clip_dagger", slra=False, dkw=False),
    "mkcl#": LossConfig(positives="knowledge", slra=False, dkw=False),
    "mkcl": LossConfig(positives="all", slra=False, dkw=False),
    "mkcl+slra": LossConfig(positives="all", slra=True, dkw=False),
    "make": LossConfig(positives="all", slra=True, dkw=True),
}

# The SigLIP baselines of Tables 1-2: one text per image (raw caption, or the Derm1M-dagger text), sigmoid loss.
SIGLIP_ROWS = {
    "siglip": LossConfig(positives="clip_raw", slra=False, dkw=False, objective="sigmoid"),
    "siglip_dagger": LossConfig(positives="clip_dagger", slra=False, dkw=False, objective="sigmoid"),
}
