"""Offline record writing: MAKE training CSV + images → a sharded ArrayRecord dataset.

``python -m make_jax.records.convert`` (``convert``) and the CSV helpers it and the knowledge builder share
(``csv_io``). The record schema and the reader live with the training input, in ``make_jax.data.records``.
See docs/records.md.
"""
