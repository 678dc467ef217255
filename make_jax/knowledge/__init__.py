"""The MAKE knowledge set, built offline from a caption table: aspect texts, subtexts and masks.

``python -m make_jax.knowledge`` (``builder``); concept/disease extraction from captions with a lexicon
(``lexicon``) or an LLM (``llm_extract``); sentence splitting and truncation (``sentences``); the aspect-text
templates (``aspects``). See docs/knowledge.md.
"""
