"""CLI: python -m make_jax.knowledge INPUT -o OUTPUT [options]  (see docs/knowledge.md)."""

import sys

from .builder import main

sys.exit(main())
