"""Making lm-evaluation-harness's own `lm_eval` command find the `mvlm_jax` model.

lm-eval 0.4.13 knows only the models of its built-in table (lm_eval/models/__init__.py) and reads no
entry points, so an installed package cannot add one. `make install` writes a `.pth` file into the
environment's site-packages (`python -m mvlm_jax.eval.lm_plugin`): when the interpreter starts the
`lm_eval` script, that line imports mvlm_jax.eval.lm_harness, whose `@register_model("mvlm_jax")` adds
the model; any other program skips it at the cost of one comparison.
"""
from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

from mvlm_jax.atomic import atomic_file

PTH_NAME = "mvlm_jax_lm_eval.pth"  # sorts after setuptools' __editable__ .pth, which puts mvlm_jax on sys.path
PTH_LINE = ("import sys; sys.argv and sys.argv[0].endswith(('lm_eval', 'lm-eval')) and "
            "__import__('mvlm_jax.eval.lm_harness')\n")


def install(site_packages: str | Path | None = None) -> Path:
    """Write the .pth file (atomically) into `site_packages` (default: this interpreter's purelib)."""
    path = Path(site_packages or sysconfig.get_paths()["purelib"]) / PTH_NAME
    with atomic_file(path, force=True) as partial:
        partial.write_text(PTH_LINE)
    return path


if __name__ == "__main__":
    print(f"wrote {install(sys.argv[1] if len(sys.argv) > 1 else None)}: `lm_eval --model mvlm_jax` finds the model")
