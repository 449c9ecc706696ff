"""`mvlm`: the one command-line entry. Each subcommand is a module that also runs as `python -m ...`."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Sequence

from data_pipelines.errors import user_errors

# subcommand -> (module whose main(argv) runs it, or "module:function", help)
COMMANDS = {
    "generate": ("mvlm_jax.generate.cli:generate_main", "continue a prompt (text, or image + text) from a checkpoint"),
    "chat": ("mvlm_jax.generate.cli:chat_main", "chat with a checkpoint in the vicuna_v1 template"),
    "convert": ("mvlm_jax.convert.hf", "Hugging Face <-> checkpoint (import / export)"),
    "export": ("mvlm_jax.export.__main__", "checkpoint -> GGUF for llama.cpp (LLM + mmproj)"),
    "sweep": ("mvlm_jax.sweep.__main__", "run an experiment file's sweep(arg): trials, shared stages, report"),
    "eval vlm": ("mvlm_jax.eval.cli:vlm_main", "answer and score image benchmarks (checkpoint or GGUF)"),
    "eval score": ("mvlm_jax.eval.cli:score_main", "score an answers file by the official rules"),
    "eval lm": ("mvlm_jax.eval.lm_cli:main", "language benchmarks through lm-evaluation-harness"),
    "data tokenizer": ("data_pipelines.tokenizer", "train a LLaMA-2-style SentencePiece tokenizer"),
    "data shard": ("data_pipelines.shards", "tokenize corpora into memory-mapped token shards"),
    "data merge": ("data_pipelines.shard_index", "merge the parts of a sharded corpus into its index.json"),
    "data check": ("data_pipelines.check", "validate a llava / sharegpt / text dataset file"),
    "data embedded": ("data_pipelines.embedded.generate", "generate the embedded default dataset"),
    "data shuffle-images": ("data_pipelines.shuffle_images", "the image-shuffled control of a LLaVA file"),
}


def _info(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="mvlm info", description="a checkpoint's model config and parameter counts")
    parser.add_argument("--ckpt", required=True)
    args = parser.parse_args(argv)
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


def usage() -> str:
    lines = ["usage: mvlm COMMAND [ARGS...]   (mvlm COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<16} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines.append(f"  {'info':<16} a checkpoint's model config and parameter counts")
    return "\n".join(lines)


@user_errors  # every subcommand's UserError: one `error: ...` line, exit 2
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "info":
        return _info(argv[1:])
    for words in (2, 1):
        name = " ".join(argv[:words])
        if name in COMMANDS:
            module_name, _, function = COMMANDS[name][0].partition(":")
            return getattr(importlib.import_module(module_name), function or "main")(argv[words:])
    print(f"mvlm: unknown command {' '.join(argv[:2])!r}\n\n{usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
