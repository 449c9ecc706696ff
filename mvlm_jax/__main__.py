import sys

from mvlm_jax.cli import main

sys.exit(main())
