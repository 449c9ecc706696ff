"""SentencePiece tokenizer, LLaMA-2 style: BPE, byte fallback, unk 0, bos 1, eos 2, digits split.

  python -m data_pipelines.tokenizer --input 'corpus/*.jsonl' --vocab-size 32000 --out tok.model
  (also `mvlm data tokenizer ...`)

Load a user's `tokenizer.model` (LLaMA-2's for real runs) with `Tokenizer(path)`, or train one with the
same settings with `train_tokenizer`.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import io
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import sentencepiece as spm

from data_pipelines.atomic import write_bytes
from data_pipelines.documents import expand_inputs, iter_documents

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
# SentencePiece's BPE merges differ with the number of trainer threads: one fixed count everywhere.
TRAINER_THREADS = 16

# LLaMA-2's trainer settings, as its tokenizer.model's own trainer_spec records them.
LLAMA2_TRAINER_SETTINGS = dict(
    model_type="bpe", byte_fallback=True, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=-1,
    split_digits=True, allow_whitespace_only_pieces=True, normalization_rule_name="identity",
    remove_extra_whitespaces=False, add_dummy_prefix=True, character_coverage=0.99995,
    max_sentence_length=16384, split_by_unicode_script=True, split_by_number=True,
)


def file_sha256(path: str | os.PathLike) -> str:
    """Content hash of a file; computed once per (path, size, modification time) in a process."""
    stat = os.stat(path)
    return _sha256(str(Path(path).absolute()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=1024)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    del size, mtime_ns  # part of the cache key only
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Tokenizer:
    """A SentencePiece model with the ids the rest of the project relies on. Pickles by path, so that
    grain worker processes and multiprocessing pools can receive it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: tokenizer model not found")
        self.sha256 = file_sha256(self.path)
        self._load()

    def _load(self) -> None:
        self.processor = spm.SentencePieceProcessor(model_file=str(self.path))
        self.vocab_size = self.processor.vocab_size()
        self.bos_id, self.eos_id, self.unk_id = self.processor.bos_id(), self.processor.eos_id(), self.processor.unk_id()
        self.pad_id = self.processor.pad_id() if self.processor.pad_id() >= 0 else self.unk_id  # official: pad = unk

    def __getstate__(self) -> dict:
        return {"path": self.path, "sha256": self.sha256}

    def __setstate__(self, state: dict) -> None:
        self.path, self.sha256 = state["path"], state["sha256"]
        self._load()

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self.processor.encode(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.processor.encode(list(texts))

    def decode(self, ids: Iterable[int]) -> str:
        return self.processor.decode([int(i) for i in ids])

    def piece(self, token_id: int) -> str:
        return self.processor.id_to_piece(int(token_id))


def _lines(texts: Iterable[str]) -> Iterator[str]:
    """SentencePiece trains on sentences: one per non-empty line of each document."""
    for text in texts:
        for line in text.split("\n"):
            if line.strip():
                yield line


def train_tokenizer(texts: Iterable[str], vocab_size: int, out: str | os.PathLike,
                    max_sentences: int = 10_000_000, num_threads: int = TRAINER_THREADS) -> Tokenizer:
    """Train a LLaMA-2-style SentencePiece model on `texts` and write it atomically to `out`.

    Deterministic: the same texts give the same model file. SentencePiece's sentence shuffle draws from
    an unseeded generator (two runs of the demo trained different tokenizers), so it is off and the first
    `max_sentences` sentences are used; the BPE result also depends on the thread count, so that is fixed
    rather than taken from the machine."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()  # no model_prefix: the file would record that (temporary) path
    spm.SentencePieceTrainer.train(
        sentence_iterator=_lines(texts), model_writer=model, vocab_size=vocab_size,
        input_sentence_size=max_sentences, shuffle_input_sentence=False,
        num_threads=num_threads, minloglevel=2, **LLAMA2_TRAINER_SETTINGS)
    write_bytes(out, model.getvalue())
    return Tokenizer(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_pipelines.tokenizer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help="JSON lines (.gz/.zst) with 'text', or .txt files")
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--out", required=True, help="path of the .model file to write")
    parser.add_argument("--max-sentences", type=int, default=10_000_000, help="train on the first N sentences")
    args = parser.parse_args(argv)
    try:
        inputs = expand_inputs(args.input)
        tokenizer = train_tokenizer((doc.text for doc in iter_documents(inputs)), args.vocab_size, args.out,
                                    max_sentences=args.max_sentences)
    except (ValueError, OSError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {tokenizer.vocab_size} pieces, sha256 {tokenizer.sha256[:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
