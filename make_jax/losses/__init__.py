"""MAKE objectives: MKCL + SLRA + DKW, in paper mode (docs/objectives.md §2) and official mode (§5).

See docs/objectives.md for the equations, the decisions the paper leaves open and the list of
differences from the public PyTorch code.
"""

from .api import TERM_NAMES, make_loss
from .config import SIGLIP_ROWS, TABLE3, LossConfig
from .inputs import LossInputs, dense_layout
from .official import (
    official_clip_loss,
    official_dkw_weights,
    official_knowledge_embedding,
    official_loss_from_ek,
)
from .paper import paper_loss
from .siglip import SIGLIP_LOGIT_BIAS_INIT, SIGLIP_LOGIT_SCALE_INIT, siglip_loss

__all__ = [
    "SIGLIP_LOGIT_BIAS_INIT",
    "SIGLIP_LOGIT_SCALE_INIT",
    "SIGLIP_ROWS",
    "TABLE3",
    "TERM_NAMES",
    "LossConfig",
    "LossInputs",
    "dense_layout",
    "make_loss",
    "official_clip_loss",
    "official_dkw_weights",
    "official_knowledge_embedding",
    "official_loss_from_ek",
    "paper_loss",
    "siglip_loss",
]
