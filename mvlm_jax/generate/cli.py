"""`mvlm generate` and `mvlm chat` (also `python -m mvlm_jax.generate {generate,chat} ...`).

  mvlm generate --ckpt CKPT --prompt TEXT [--image FILE] [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S]
  mvlm chat --ckpt CKPT [--image FILE] [--prompt TEXT] [--template llava_llama_2]   (no --prompt: a conversation on stdin, one message a line)
  ... --gguf MODEL.gguf [--mmproj MMPROJ.gguf] instead of --ckpt: the exported files in llama.cpp

The tokenizer is --tokenizer SP_MODEL, else CKPT/tokenizer.model. `generate` continues the raw prompt
(BOS + text; with --image the image comes first) unless --template vicuna_v1 | llava_llama_2; `chat` keeps
the whole conversation in the --template (default vicuna_v1) and answers each message.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence, TextIO

from mvlm_jax.generate.prompts import (CHAT_TEMPLATES, PROMPT_TEMPLATES, build_prompt, chat_prompt, find_image,
                                      find_tokenizer, prompt_text)
from mvlm_jax.generate.sampling import SamplingConfig
from mvlm_jax.generate.stream import stream_text


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="model checkpoint directory (LLM or VLM), run in JAX")
    source.add_argument("--gguf", help="exported LLM file, run in llama.cpp (with --mmproj for images)")
    parser.add_argument("--mmproj", help="the mmproj-*.gguf of --gguf (images)")
    parser.add_argument("--tokenizer", help="SentencePiece model (default: CKPT/tokenizer.model)")
    parser.add_argument("--image", help="image file (VLM checkpoints)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-len", type=int, help="cache positions (default: the model's max_position_embeddings)")
    return parser


class Session:
    """A loaded checkpoint, its tokenizer and (optionally) one preprocessed image."""

    def __init__(self, args: argparse.Namespace):
        from data_pipelines.images import preprocess_file
        from mvlm_jax.checkpoint import load_config
        from mvlm_jax.generate.engine import Generator
        from mvlm_jax.models.config import VLMConfig

        config = load_config(args.ckpt)  # fails early, naming the file, before anything heavy loads
        self.tokenizer = find_tokenizer(args.ckpt, args.tokenizer)
        self.image = None
        if args.image is not None:
            if not isinstance(config, VLMConfig):
                raise ValueError(f"--image needs a MobileVLM checkpoint; {args.ckpt} holds a {type(config).__name__}")
            self.image = preprocess_file(find_image(args.image), config.vision.image_size)  # padded to square
        self.generator = Generator.from_checkpoint(args.ckpt, max_len=args.max_len)
        self.sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_p, args.seed)

    def answer(self, ids, out: TextIO | None = None) -> str:
        """Generate from prompt ids; stream the text to `out` when given. Returns the decoded answer."""
        from mvlm_jax.generate.engine import Request

        request = Request(ids, self.image)
        if out is None:
            [completion] = self.generator.generate([request], self.sampling)
            return self.tokenizer.decode(completion.ids)
        return stream_text(self.tokenizer, (int(t[0]) for t in self.generator.stream([request], self.sampling)),
                           self.generator.eos_ids, out)


def generate_main(argv: Sequence[str] | None = None) -> int:
    parser = _parser("mvlm generate", "continue a prompt (optionally about an image) and print the continuation")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--template", choices=PROMPT_TEMPLATES, default="raw")
    args = parser.parse_args(argv)
    try:
        if args.gguf:
            from mvlm_jax.edge.session import LlamaCppSession

            session = LlamaCppSession(args)
            print(session.answer(prompt_text([{"from": "human", "value": args.prompt}], args.template,
                                             session.image is not None)))
            return 0
        session = Session(args)
        ids = build_prompt(session.tokenizer, args.prompt, args.template, session.image is not None)
        print(session.answer(ids))
    except (FileNotFoundError, ValueError, TypeError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def chat_main(argv: Sequence[str] | None = None, stdin: TextIO | None = None) -> int:
    parser = _parser("mvlm chat", "chat in a conversation template: one-shot with --prompt, else messages on stdin")
    parser.add_argument("--prompt", help="one message; answer it and exit")
    parser.add_argument("--template", choices=CHAT_TEMPLATES, default="vicuna_v1",
                        help="the conversation template the checkpoint was trained with (config.data.template)")
    args = parser.parse_args(argv)
    stdin = stdin or sys.stdin
    try:
        if args.gguf:
            from mvlm_jax.edge.session import LlamaCppSession
        session = LlamaCppSession(args) if args.gguf else Session(args)
        has_image = session.image is not None

        def prompt(turns: list[dict]):  # ids for JAX, text for llama.cpp (its own tokenizer)
            if args.gguf:
                return prompt_text(turns, args.template, has_image)
            return chat_prompt(session.tokenizer, turns, has_image, args.template)

        if args.prompt is not None:
            print(session.answer(prompt([{"from": "human", "value": args.prompt}])))
            return 0
        turns: list[dict] = []
        interactive = stdin.isatty()
        while True:
            if interactive:
                print("USER: ", end="", file=sys.stderr, flush=True)
            line = stdin.readline()
            if not line:
                return 0
            if not line.strip():
                continue
            turns.append({"from": "human", "value": line.strip()})
            sys.stdout.write("ASSISTANT: ")
            answer = session.answer(prompt(turns), out=sys.stdout)
            sys.stdout.write("\n")
            sys.stdout.flush()
            turns.append({"from": "gpt", "value": answer.strip()})
    except (FileNotFoundError, ValueError, TypeError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m mvlm_jax.generate [generate|chat] ARGS` (generate when the first word is an option)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "chat":
        return chat_main(argv[1:])
    return generate_main(argv[1:] if argv and argv[0] == "generate" else argv)
