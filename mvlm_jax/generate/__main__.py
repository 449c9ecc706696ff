import sys

from mvlm_jax.generate.cli import main

sys.exit(main())
