"""The training input: the slot schema (``schema``), the record format and its reader (``records``), the image
transforms (``transforms``) and the Grain pipeline (``pipeline``). Offline tools that write records, build the
knowledge set or generate SynthDerm live in ``make_jax.records``, ``make_jax.knowledge`` and
``make_jax.synthderm``."""
