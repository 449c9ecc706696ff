"""`mvlm`: the one command-line entry. Each subcommand is a module that also runs as `python -m ...`."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from mvlm_jax.convert import hf as convert_hf


def _info(args: argparse.Namespace) -> int:
    import jax  # deferred: `mvlm --help` stays instant

    from mvlm_jax.checkpoint import load_config
    from mvlm_jax.models import abstract_params
    from mvlm_jax.models.config import to_dict

    try:
        config = load_config(args.ckpt)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    counts = {name: sum(leaf.size for leaf in jax.tree.leaves(tree))
              for name, tree in abstract_params(config).items()}
    print(json.dumps({**to_dict(config), "parameters": sum(counts.values()), "parameters_by_part": counts}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mvlm", description="MobileVLM in JAX: models, conversion, training, export")
    commands = parser.add_subparsers(dest="group", required=True)
    convert = commands.add_parser("convert", help="Hugging Face <-> checkpoint (python -m mvlm_jax.convert.hf)")
    convert_hf.build_parser(convert)
    convert.set_defaults(handler=convert_hf.run)
    info = commands.add_parser("info", help="print a checkpoint's model config and parameter counts")
    info.add_argument("--ckpt", required=True)
    info.set_defaults(handler=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
