import sys

from make_jax.evaluate.cli import main

sys.exit(main())
