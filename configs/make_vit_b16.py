"""The paper's recipe (docs/training.md): ViT-B/16 + 12×512 text tower, MAKE loss, AdamW 1e-4, batch 2048, 15 epochs,
starting from OpenAI CLIP ViT-B/16 (`init_from` is required: a converted checkpoint, or `scratch` on purpose).

    python launch.py --config configs/make_vit_b16.py --workdir runs/make \
        --config.data.records=/data/derm1m_records --config.init_from=checkpoints/openai_vitb16
"""

from configs.common import base_config


def get_config():
    return base_config()
