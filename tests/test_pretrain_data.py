"""Tokenizer, token shards and the grain pretraining pipeline, including exact resume."""
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zstandard

from data_pipelines.pretrain_pipeline import (PretrainData, batch_hash, build_pretrain_dataset, mixture,
                                              segments_from_eos)
from data_pipelines.shards import main as shards_main
from data_pipelines.shards import write_shards
from data_pipelines.token_source import TokenWindows
from data_pipelines.tokenizer import train_tokenizer

WORDS = "the a red blue green circle square triangle is on left right of and big small there are two three".split()


def documents(seed: int, count: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(3, 30))) + f" {i}." for i in range(count)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    docs_a, docs_b, docs_c = documents(0, 400), documents(1, 300), documents(2, 200)
    with open(root / "a.jsonl", "w") as handle:
        for text in docs_a:
            handle.write(json.dumps({"text": text, "meta": {"redpajama_set_name": "RedPajamaC4"}}) + "\n")
    with gzip.open(root / "b.jsonl.gz", "wt") as handle:
        for text in docs_b:
            handle.write(json.dumps({"text": text}) + "\n")
        handle.write("{not json\n")
        handle.write(json.dumps({"title": "no text field"}) + "\n")
    with open(root / "c.jsonl.zst", "wb") as raw:
        raw.write(zstandard.ZstdCompressor().compress("".join(json.dumps({"text": t}) + "\n" for t in docs_c).encode()))
    tokenizer = train_tokenizer(docs_a + docs_b + docs_c, 320, root / "tok.model")
    return root, tokenizer, docs_a + docs_b + docs_c


@pytest.fixture(scope="module")
def shards(corpus, tmp_path_factory):
    root, tokenizer, _ = corpus
    out = tmp_path_factory.mktemp("shards") / "shards"
    write_shards([str(root / n) for n in ("a.jsonl", "b.jsonl.gz", "c.jsonl.zst")], tokenizer, out, workers=2,
                 max_tokens_per_file=3000, progress=False)
    return out


def test_tokenizer_has_llama2_ids_and_byte_fallback(corpus):
    _, tokenizer, _ = corpus
    assert (tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.vocab_size) == (0, 1, 2, 320)
    text = "red circle 2024 😀 ünïcode"
    ids = tokenizer.encode(text, bos=True, eos=True)
    assert ids[0] == 1 and ids[-1] == 2 and tokenizer.decode(ids) == text  # byte fallback: lossless
    assert 0 not in ids  # no unk: unseen characters become byte pieces
    assert [tokenizer.piece(i) for i in tokenizer.encode("2024")][-4:] == ["2", "0", "2", "4"]  # digits split
    import hashlib
    assert tokenizer.sha256 == hashlib.sha256(tokenizer.path.read_bytes()).hexdigest()


def test_tokenizer_training_is_deterministic(corpus, tmp_path):
    """The same texts give the same model file, in this process and in another one (SentencePiece's
    sentence shuffle was seeded from the machine: two `make demo` runs trained different tokenizers)."""
    root, tokenizer, docs = corpus
    again = train_tokenizer(docs, 320, tmp_path / "again.model")
    assert again.path.read_bytes() == tokenizer.path.read_bytes()
    script = ("import json, sys; from data_pipelines.tokenizer import train_tokenizer; "
              "train_tokenizer(json.load(open(sys.argv[1])), 320, sys.argv[2])")
    (tmp_path / "docs.json").write_text(json.dumps(docs))
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "docs.json"), str(tmp_path / "other.model")],
                   check=True, cwd=Path(__file__).parents[1])
    assert (tmp_path / "other.model").read_bytes() == tokenizer.path.read_bytes()


def test_shards_hold_every_document_then_eos_in_input_order(corpus, shards):
    _, tokenizer, docs = corpus
    index = json.loads((shards / "index.json").read_text())
    assert index["dtype"] == "uint16" and index["tokenizer"]["sha256"] == tokenizer.sha256
    assert len(index["files"]) > 3 and all(f["tokens"] <= 3000 for f in index["files"])
    stream = np.concatenate([np.fromfile(shards / f["name"], np.uint16) for f in index["files"]])
    expected = np.concatenate([tokenizer.encode(d) + [tokenizer.eos_id] for d in docs])
    np.testing.assert_array_equal(stream, expected)
    assert index["total_tokens"] == len(expected) and index["total_documents"] == len(docs)
    assert index["sources"]["RedPajamaC4"]["documents"] == 400 and index["sources"]["b"]["documents"] == 300
    assert index["skipped"] == {"malformed_json": 1, "missing_field": 1}  # counted, not silently dropped


def test_rerun_skips_finished_inputs_and_redoes_broken_or_changed_ones(corpus, shards, tmp_path):
    root, tokenizer, docs = corpus
    import shutil
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    index = json.loads((copy / "index.json").read_text())
    mtimes = {f["name"]: os.stat(copy / f["name"]).st_mtime_ns for f in index["files"]}
    of_b = {f["name"] for f in index["files"] if f["input"].endswith("b.jsonl.gz")}
    broken = sorted(of_b)[0]
    (copy / broken).write_bytes(b"\0\0")  # truncated by a crash
    inputs = [str(root / n) for n in ("a.jsonl", "b.jsonl.gz", "c.jsonl.zst")]
    again = write_shards(inputs, tokenizer, copy, workers=1, max_tokens_per_file=3000, progress=False)
    assert again["total_tokens"] == index["total_tokens"]
    for name, mtime in mtimes.items():
        assert (os.stat(copy / name).st_mtime_ns == mtime) == (name not in of_b), name
    assert os.path.getsize(copy / broken) > 2

    # A grown input list (the new file sorts between the others) keeps the finished inputs.
    (root / "b2.jsonl").write_text(json.dumps({"text": docs[0]}) + "\n")
    grown = write_shards(inputs[:2] + [str(root / "b2.jsonl")] + inputs[2:], tokenizer, copy, workers=1,
                         max_tokens_per_file=3000, progress=False)
    assert grown["total_documents"] == index["total_documents"] + 1
    assert all(os.stat(copy / f["name"]).st_mtime_ns == mtimes[f["name"]] for f in index["files"]
               if f["name"] not in of_b)
    # BOS is part of what must match: switching it redoes every input, and the index says so truthfully.
    with_bos = write_shards(inputs, tokenizer, copy, workers=1, max_tokens_per_file=3000, bos=True, progress=False)
    assert with_bos["bos_prepended"] and with_bos["total_tokens"] == index["total_tokens"] + index["total_documents"]
    first = np.fromfile(copy / with_bos["files"][0]["name"], np.uint16)
    assert first[0] == tokenizer.bos_id


def test_files_stay_within_the_token_bound_even_for_long_documents(corpus, tmp_path):
    root, tokenizer, docs = corpus
    long_doc = " ".join(docs[:60])
    (tmp_path / "long.jsonl").write_text(json.dumps({"text": docs[0]}) + "\n" + json.dumps({"text": long_doc}) + "\n")
    index = write_shards([str(tmp_path / "long.jsonl")], tokenizer, tmp_path / "out", workers=1,
                         max_tokens_per_file=100, progress=False)
    assert all(f["tokens"] <= 100 for f in index["files"]) and len(index["files"]) > 3
    stream = np.concatenate([np.fromfile(tmp_path / "out" / f["name"], np.uint16) for f in index["files"]])
    np.testing.assert_array_equal(stream, tokenizer.encode(docs[0]) + [2] + tokenizer.encode(long_doc) + [2])
    assert sum(f["documents"] for f in index["files"]) == 2


def test_shard_cli_redoes_inputs_written_with_another_tokenizer(corpus, tmp_path):
    root, tokenizer, docs = corpus
    other = train_tokenizer(docs[::-1], 300, tmp_path / "other.model")
    args = ["--input", str(root / "a.jsonl"), "--out", str(tmp_path / "out"), "--workers", "1"]
    assert shards_main(["--tokenizer", str(tokenizer.path), *args]) == 0
    assert shards_main(["--tokenizer", str(other.path), *args]) == 0
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["tokenizer"]["sha256"] == other.sha256 != tokenizer.sha256
    stream = np.fromfile(tmp_path / "out" / index["files"][0]["name"], np.uint16)
    assert list(stream[:len(other.encode(docs[0]))]) == other.encode(docs[0])


def test_windows_run_across_document_and_file_boundaries(shards):
    windows = TokenWindows(shards, 100)
    index = windows.index
    stream = np.concatenate([np.fromfile(shards / f["name"], np.uint16) for f in index["files"]]).astype(np.int32)
    assert len(windows) == (len(stream) - 1) // 100
    for i in (0, 1, 29, len(windows) - 1):  # window 29 spans the boundary at 3000 tokens
        np.testing.assert_array_equal(windows[i], stream[i * 100:i * 100 + 101])


def test_segments_restart_after_every_eos():
    tokens = np.array([5, 6, 2, 7, 8, 9, 2, 2, 4])
    segment_ids, positions = segments_from_eos(tokens, 2)
    np.testing.assert_array_equal(segment_ids, [1, 1, 1, 2, 2, 2, 2, 3, 4])
    np.testing.assert_array_equal(positions, [0, 1, 2, 0, 1, 2, 3, 0, 0])


def config(shards, **overrides) -> PretrainData:
    return PretrainData(**{"sources": ((str(shards), 1.0),), "seq_len": 32, "batch_size": 4, "seed": 3, **overrides})


def test_batches_follow_the_contract(shards):
    batch = next(iter(build_pretrain_dataset(config(shards, reset_attention_at_eos=True))))
    assert {k: (v.shape, v.dtype.name) for k, v in batch.items()} == {
        "tokens": ((4, 32), "int32"), "targets": ((4, 32), "int32"), "loss_mask": ((4, 32), "float32"),
        "segment_ids": ((4, 32), "int32"), "positions": ((4, 32), "int32")}
    np.testing.assert_array_equal(batch["tokens"][:, 1:], batch["targets"][:, :-1])
    eos_rows, eos_cols = np.nonzero(batch["tokens"][:, :-1] == 2)
    assert len(eos_rows) and all(batch["positions"][r, c + 1] == 0 for r, c in zip(eos_rows, eos_cols))


def test_shuffle_is_seeded_global_and_reshuffled_per_epoch(shards):
    windows = len(TokenWindows(shards, 32))
    def first_tokens(cfg, steps):
        return [tuple(b["tokens"][:, 0]) for _, b in zip(range(steps), build_pretrain_dataset(cfg))]
    assert first_tokens(config(shards), 5) == first_tokens(config(shards), 5)
    assert first_tokens(config(shards), 5) != first_tokens(config(shards, seed=4), 5)
    two_epochs = config(shards, batch_size=1, num_epochs=2)
    seen = [batch_hash(b) for b in build_pretrain_dataset(two_epochs)]
    assert len(seen) == 2 * windows
    assert sorted(seen[:windows]) == sorted(seen[windows:]) and seen[:windows] != seen[windows:]


def test_processes_split_the_global_batch_without_overlap(shards):
    single = [b["tokens"] for _, b in zip(range(4), build_pretrain_dataset(config(shards, batch_size=4)))]
    halves = [[b["tokens"] for _, b in zip(range(4), build_pretrain_dataset(config(shards, batch_size=4), p, 2))]
              for p in (0, 1)]
    for step in range(4):
        assert halves[0][step].shape == (2, 32)
        rows = {r.tobytes() for h in halves for r in h[step]}
        assert len(rows) == 4  # disjoint
    all_single = {r.tobytes() for s in single for r in s}
    assert {r.tobytes() for h in halves for s in h for r in s} == all_single


def test_mixture_samples_sources_by_weight(corpus, shards, tmp_path):
    root, tokenizer, _ = corpus
    small = tmp_path / "small"
    write_shards([str(root / "c.jsonl.zst")], tokenizer, small, workers=1, progress=False)
    cfg = config(shards, sources=((str(shards), 0.75), (str(small), 0.25)), batch_size=1, seq_len=16)
    small_windows = {w.tobytes() for w in (TokenWindows(small, 16)[i][:-1] for i in range(len(TokenWindows(small, 16))))}
    draws = [b["tokens"][0].tobytes() in small_windows for _, b in zip(range(400), build_pretrain_dataset(cfg))]
    assert abs(np.mean(draws) - 0.25) < 0.03
    with pytest.raises(ValueError, match="no shard directory for"):
        mixture("redpajama_table12", {"c4": str(small)})
    assert len(mixture("redpajama_table12", dict.fromkeys(
        ["arxiv", "book", "c4", "common_crawl", "github", "stackexchange", "wikipedia"], str(small)))) == 7


@pytest.mark.parametrize("stop_at", [0, 3, 7, 11])
def test_restored_iterator_continues_exactly(shards, stop_at):
    cfg = config(shards, reset_attention_at_eos=True)
    reference = [batch_hash(b) for _, b in zip(range(14), build_pretrain_dataset(cfg))]
    iterator = iter(build_pretrain_dataset(cfg))
    for _ in range(stop_at):
        next(iterator)
    state = iterator.get_state()  # JSON bytes: what a checkpoint stores
    resumed = iter(build_pretrain_dataset(cfg))
    resumed.set_state(state)
    assert [batch_hash(next(resumed)) for _ in range(14 - stop_at)] == reference[stop_at:]


def test_command_line_from_embedded_corpus_to_shards(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    mvlm = str(Path(sys.executable).with_name("mvlm"))
    steps = [["data", "embedded", "--out", str(tmp_path / "world"), "--size", "tiny"],
             ["data", "tokenizer", "--input", str(tmp_path / "world" / "corpus_*.jsonl"), "--vocab-size", "400",
              "--out", str(tmp_path / "tok.model")],
             ["data", "shard", "--tokenizer", str(tmp_path / "tok.model"), "--input",
              str(tmp_path / "world" / "corpus_train.jsonl"), "--out", str(tmp_path / "shards"), "--workers", "2"],
             ["data", "check", "--format", "llava", "--input", str(tmp_path / "world" / "llava_instruct_train.json"),
              "--image-root", str(tmp_path / "world" / "images")]]
    for step in steps:
        done = subprocess.run([mvlm, *step], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (step, done.stderr[-2000:])
    index = json.loads((tmp_path / "shards" / "index.json").read_text())
    assert index["total_documents"] == 120 and index["sources"] == {"embedded": {
        "tokens": index["total_tokens"], "documents": 120}}


def test_tfds_dataset_prepared_to_array_record_shards_through_the_command_line(corpus, tmp_path, monkeypatch):
    """A real tensorflow-datasets builder, prepared to ArrayRecord in a temporary TFDS_DATA_DIR, read back by
    name through tfds.data_source (no TensorFlow needed) by `mvlm data shard --input tfds:NAME:SPLIT`."""
    import tensorflow_datasets as tfds  # in the test extra
    _, tokenizer, docs = corpus

    class MvlmTinyCorpus(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(docs[:5]), "validation": self._generate_examples(docs[5:8])}

        def _generate_examples(self, texts):
            for i, text in enumerate(texts):
                yield i, {"text": text}

    MvlmTinyCorpus(data_dir=str(tmp_path / "tfds"), file_format="array_record").download_and_prepare()
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    assert shards_main(["--tokenizer", str(tokenizer.path), "--input", "tfds:mvlm_tiny_corpus:validation",
                        "--out", str(tmp_path / "shards"), "--workers", "1"]) == 0
    index = json.loads((tmp_path / "shards" / "index.json").read_text())
    assert index["sources"] == {"mvlm_tiny_corpus": {"tokens": index["total_tokens"], "documents": 3}}
    stream = np.concatenate([np.fromfile(tmp_path / "shards" / f["name"], np.uint16) for f in index["files"]])
    source = tfds.data_source("mvlm_tiny_corpus", split="validation")
    order = [source[i]["text"].decode() for i in range(len(source))]  # ArrayRecord keeps tfds's shuffled order
    assert sorted(order) == sorted(docs[5:8])
    np.testing.assert_array_equal(stream, np.concatenate([tokenizer.encode(d) + [2] for d in order]))


def test_finite_epochs_give_every_process_the_same_number_of_steps(shards):
    cfg = config(shards, batch_size=6, num_epochs=1)
    counts = [sum(1 for _ in build_pretrain_dataset(cfg, p, 2)) for p in (0, 1)]
    windows = len(TokenWindows(shards, 32))
    assert counts[0] == counts[1] == windows // 6
    with pytest.raises(ValueError, match="single source"):
        build_pretrain_dataset(config(shards, sources=((str(shards), 0.5), (str(shards), 0.5)), num_epochs=1))


def test_fingerprint_survives_moving_the_shards(shards, tmp_path):
    import shutil
    moved = tmp_path / "moved"
    shutil.copytree(shards, moved)
    state = build_pretrain_dataset(config(shards)).get_state()
    build_pretrain_dataset(config(moved)).set_state(state)  # same content: accepted
    with pytest.raises(ValueError, match="another data configuration"):
        build_pretrain_dataset(config(moved, batch_size=8)).set_state(state)
