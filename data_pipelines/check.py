"""Check a dataset file before training: `python -m data_pipelines.check --format llava --input FILE ...`.

Exit codes: 0 clean (or --skip-bad), 1 problems found, 2 bad arguments / unreadable input path.
Problems go to stderr as "file:line: reason: detail", one per line, so editors and grep can jump to them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .records import UnsupportedFileError
from .validate import FORMATS, SkipReport, check_file


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_pipelines.check", description=__doc__.splitlines()[0])
    p.add_argument("--format", required=True, choices=FORMATS, help="record layout to expect")
    p.add_argument("--input", required=True, type=Path,
                   help="a .json list, .jsonl(.gz|.zst), or .txt(.gz|.zst) file")
    p.add_argument("--image-root", type=Path, default=None,
                   help="folder the llava 'image' paths are relative to; without it image files are not checked")
    p.add_argument("--skip-bad", action="store_true",
                   help="report skipped records per reason and exit 0, as the training pipelines would")
    p.add_argument("--max-examples", type=int, default=5, metavar="N",
                   help="example file:line lines per reason in the --skip-bad report (default 5)")
    p.add_argument("--no-verify-images", action="store_true",
                   help="check that image files exist but do not decode them (faster)")
    length = p.add_argument_group("length check (llava / sharegpt): samples the pipeline would skip as too_long")
    length.add_argument("--tokenizer", type=Path, help="SentencePiece model the training run uses")
    length.add_argument("--seq-len", type=int)
    length.add_argument("--template", default="vicuna_v1", help="vicuna_v1 or plain")
    length.add_argument("--num-visual-tokens", type=int, default=144, help="slots per image (144 LDP, 576 MLP)")
    length.add_argument("--no-truncate", action="store_true",
                        help="report every sample longer than --seq-len (the pipeline's truncate=False)")
    return p


def _token_counter(args: argparse.Namespace):
    """Record -> its input length as the pipeline keeps it (truncated when the truncation rule allows),
    so that exactly the records the pipeline skips are too_long; None without --seq-len."""
    if args.seq_len is None or args.format == "text":
        return None
    if args.tokenizer is None:
        raise ValueError("--seq-len needs --tokenizer")
    from .conversations import fit, tokenize_record, widened_length
    from .tokenizer import Tokenizer

    tokenizer = Tokenizer(args.tokenizer)

    def count(record) -> int:
        ids, target, _ = tokenize_record(record, tokenizer, args.format, args.template)
        kept = fit(ids, target, args.seq_len, args.num_visual_tokens, truncate=not args.no_truncate)
        return widened_length(ids if kept is None else kept[0], args.num_visual_tokens)

    return count


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check; returns the exit code instead of calling sys.exit (for tests and other callers)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on bad arguments and 0 on --help
        return int(e.code or 0)
    err = sys.stderr
    if args.max_examples < 0:
        print("error: --max-examples must be >= 0", file=err)
        return 2
    if args.image_root is not None and not args.image_root.is_dir():
        print(f"error: --image-root {args.image_root}: not a directory", file=err)
        return 2
    if args.image_root is not None and args.format != "llava":
        print(f"note: --image-root is ignored for --format {args.format} (no images)", file=err)

    report = SkipReport(args.max_examples)
    kept = items = n_problems = 0
    try:
        checked = check_file(args.input, args.format, args.image_root, verify_images=not args.no_verify_images,
                             seq_len=args.seq_len, count_tokens=_token_counter(args))
        for _, problems in checked:
            items += 1
            if not problems:
                kept += 1
                continue
            report.add(problems[0])  # one count per skipped record
            if not args.skip_bad:
                n_problems += len(problems)
                for problem in problems:
                    print(problem, file=err)
    except (FileNotFoundError, IsADirectoryError, UnsupportedFileError, ValueError) as e:
        print(f"error: {e}", file=err)
        return 2
    except OSError as e:  # unreadable input (permissions, I/O error): not a data problem
        print(f"error: {args.input}: {e}", file=err)
        return 2

    if args.format == "llava" and args.image_root is None:
        print("note: no --image-root given, image files were not checked", file=err)
    if args.skip_bad:
        print(report.format(kept=kept))
        return 0
    if report.total:
        print(f"{args.input}: {n_problems} problem(s) in {report.total} of {items} record(s)", file=err)
        return 1
    print(f"{kept} records OK ({args.input})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
