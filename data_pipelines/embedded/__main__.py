"""`python -m data_pipelines.embedded --out DIR [--seed 0] [--size demo|small|tiny] [--image-size 64]`."""
import sys

from .generate import main

sys.exit(main())
