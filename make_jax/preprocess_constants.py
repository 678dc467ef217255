"""CLIP image normalisation constants (OpenAI CLIP, used by MAKE and open_clip for these models; README.md, The model)."""

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
