"""Corpus preparation split over N parts (hosts): the merged dataset is the same for every N (files, token
stream, pretraining batches), re-runs skip finished units, the merge refuses missing, stale and
differently-made parts, bad input is counted with file:line, and the SLURM launcher's jobs (rendered
against tests/data/shard_slurm/, and run through submitit's local executor).

Regenerate the expected files after a deliberate change: MVLM_UPDATE_EXPECTED=1 pytest tests/test_corpus_parts.py
(then read the diff: it is what a cluster would be sent). They are submitit 1.5.4's sbatch scripts."""
import contextlib
import io
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import zstandard

from data_pipelines.embedded import world
from data_pipelines.pretrain_pipeline import PretrainData, batch_hash, build_pretrain_dataset
from data_pipelines.shard_index import merge_parts, part_path
from data_pipelines.shards import main as shards_main
from data_pipelines.shards import write_shards
from data_pipelines.tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = ROOT / "tests" / "data" / "shard_slurm"
UNIT = 6000  # bytes: the 60 kB corpus file becomes about 10 units
BAD_LINE = 101  # where the corpus file holds an unreadable line


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The embedded corpus's documents in one large JSON-lines file (with an unreadable line and a record
    without text) and a small .zst file cut short."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    docs = [world.corpus_document(rng) for _ in range(400)]
    lines = [json.dumps({"text": t, "source": "embedded"}) for t in docs[:300]]
    lines.insert(BAD_LINE - 1, "{not json")
    lines.insert(200, json.dumps({"title": "no text"}))
    (root / "a_corpus.jsonl").write_text("\n".join(lines) + "\n")
    packed = zstandard.ZstdCompressor().compress("".join(json.dumps({"text": t}) + "\n" for t in docs[300:]).encode())
    (root / "b_tail.jsonl.zst").write_bytes(packed[:len(packed) * 3 // 4])  # truncated: its tail is unreadable
    tokenizer = train_tokenizer(docs, 400, root / "tok.model")
    return root, tokenizer, [str(root / "a_corpus.jsonl"), str(root / "b_tail.jsonl.zst")]


def shard(corpus, out, part=(1, 1), unit_bytes=UNIT, **kwargs):
    _, tokenizer, inputs = corpus
    return write_shards(inputs, tokenizer, out, workers=1, max_tokens_per_file=2000, progress=False, part=part,
                        unit_bytes=unit_bytes, **kwargs)


def batches(shard_dir, count=6):
    stream = iter(build_pretrain_dataset(PretrainData(sources=((str(shard_dir), 1.0),), seq_len=64, batch_size=4)))
    return [batch_hash(next(stream)) for _ in range(count)]


@pytest.fixture(scope="module")
def one_and_three(corpus, tmp_path_factory):
    base = tmp_path_factory.mktemp("parts")
    one = shard(corpus, base / "one")
    returned = [shard(corpus, base / "three", part=(i, 3)) for i in (2, 3, 1)]  # any order
    return base / "one", base / "three", returned


def test_three_parts_give_the_files_stream_and_batches_of_one(corpus, one_and_three):
    one, three, returned = one_and_three
    assert [r["format"] for r in returned] == ["mvlm-token-shards-part/1"] * 2 + ["mvlm-token-shards/1"]
    index_one, index_three = (json.loads((d / "index.json").read_text()) for d in (one, three))
    assert sum("range" in f for f in index_one["files"]) > 5  # the large file was cut into units
    assert all(len(json.loads(part_path(three, i, 3).read_text())["units"]) >= 2 for i in (1, 2, 3))
    for key in ("files", "sources", "skipped", "skipped_examples", "total_tokens", "total_documents"):
        assert index_one[key] == index_three[key], key
    streams = [b"".join((d / f["name"]).read_bytes() for f in index_one["files"]) for d in (one, three)]
    assert streams[0] == streams[1]
    assert batches(one) == batches(three)
    # Not cut at all (one unit per file): other files, the same stream, so the same batches.
    whole = shard(corpus, three.parent / "whole", unit_bytes=1 << 30)
    assert len(whole["files"]) < len(index_one["files"]) and batches(three.parent / "whole") == batches(three)


def test_bad_records_are_counted_with_the_files_line_numbers(corpus, one_and_three):
    root, tokenizer, inputs = corpus
    for directory in one_and_three[:2]:
        index = json.loads((directory / "index.json").read_text())
        assert index["skipped"] == {"malformed_json": 2, "missing_field": 1}
        examples = index["skipped_examples"]
        assert examples["malformed_json"][0].startswith(f"{inputs[0]}:{BAD_LINE}: malformed_json")
        assert examples["missing_field"][0].startswith(f"{inputs[0]}:201: missing_field")  # in a later unit
        assert examples["malformed_json"][1].startswith(f"{inputs[1]}:") and "unreadable" in examples["malformed_json"][1]
        assert sum(sum(p["counts"].values()) for p in index["skipped_by_part"].values()) == 3
    assert set(json.loads((one_and_three[1] / "index.json").read_text())["skipped_by_part"]) == {"1/3", "2/3", "3/3"}
    with pytest.raises(OSError, match="missing.jsonl: cannot be opened"):
        write_shards([str(root / "missing.jsonl")], tokenizer, root / "never", progress=False)


def test_rerun_skips_finished_units_and_merge_refuses_missing_stale_or_other_parts(corpus, one_and_three, tmp_path):
    root, tokenizer, inputs = corpus
    three = tmp_path / "three"
    shutil.copytree(one_and_three[1], three)
    units = json.loads(part_path(three, 2, 3).read_text())["units"]
    bins = sorted(three.glob(f"part-{units[0]['key']}-*.bin")) + sorted(three.glob(f"part-{units[1]['key']}-*.bin"))
    mtimes = {p: p.stat().st_mtime_ns for p in bins}
    (three / f"part-{units[0]['key']}.json").unlink()  # part 2 crashed before finishing its first unit
    part_path(three, 2, 3).unlink()
    (three / "index.json").unlink()
    with pytest.raises(ValueError, match=r"part\(s\) 2/3 missing"):
        merge_parts(three)
    assert shard(corpus, three, part=(2, 3))["format"] == "mvlm-token-shards/1"  # the last part merges
    assert [p.stat().st_mtime_ns == mtimes[p] for p in bins] == [not p.name.startswith(f"part-{units[0]['key']}")
                                                                   for p in bins]
    assert json.loads((three / "index.json").read_text())["files"] == \
        json.loads((one_and_three[0] / "index.json").read_text())["files"]

    # another BOS setting: part 2 redone, index.json withdrawn
    assert shard(corpus, three, part=(2, 3), bos=True)["format"] == "mvlm-token-shards-part/1"
    assert not (three / "index.json").exists()
    with pytest.raises(ValueError, match=r"part 2/3 put BOS before every document \(--bos\), part 1/3 did not"):
        merge_parts(three)
    other = train_tokenizer([world.corpus_document(np.random.default_rng(5)) for _ in range(50)], 380,
                            tmp_path / "other.model")
    write_shards(inputs, other, three, workers=1, progress=False, part=(2, 3), unit_bytes=UNIT)
    with pytest.raises(ValueError, match=r"part 2/3 was tokenized with .*other.model .* part 1/3 with .*tok.model"):
        merge_parts(three)
    shard(corpus, three, part=(2, 3))
    before = os.stat(inputs[1])
    os.utime(inputs[1], ns=(1, 1))  # the input changed after the parts ran
    try:
        with pytest.raises(ValueError, match=r"part 3/3 is stale: .*b_tail.jsonl.zst changed"):
            merge_parts(three)
    finally:
        os.utime(inputs[1], ns=(before.st_atime_ns, before.st_mtime_ns))
    merge_parts(three)
    code = shards_main(["--tokenizer", str(tokenizer.path), "--input", *inputs, "--out", str(tmp_path / "cli"),
                        "--workers", "1", "--part", "4/3"])
    assert code == 1


def normalized(text: str, workdir: Path, root: Path) -> str:
    return text.replace(str(workdir), "OUT").replace(str(root), "CORPUS").replace(sys.executable, "PYTHON")


def test_slurm_dry_run_renders_the_part_array_and_the_merge_after_it(corpus, tmp_path):
    root, tokenizer, _ = corpus
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = shards_main(["--tokenizer", str(tokenizer.path), "--input", str(root / "*.jsonl*"), "--out",
                            str(tmp_path), "--launcher", "slurm", "--parts", "3", "--dry-run",
                            "--slurm-partition", "cpu", "--slurm-cpus-per-task", "8"])
    assert code == 0, out.getvalue()
    dry = tmp_path / "slurm" / "dry_run"
    written = sorted(p.name for p in dry.iterdir())
    assert written == ["00-1001.sbatch", "01-1002.sbatch", "commands.txt"]
    assert not list(tmp_path.glob("*.bin")) and not list((tmp_path / "slurm").glob("*/*.pkl"))  # nothing ran
    for name in written:
        actual = normalized((dry / name).read_text(), tmp_path, root)
        if os.environ.get("MVLM_UPDATE_EXPECTED"):
            EXPECTED.mkdir(exist_ok=True)
            (EXPECTED / name).write_text(actual)
        assert actual == (EXPECTED / name).read_text(), f"{name} differs from tests/data/shard_slurm/{name}"
        if name.endswith(".sbatch"):
            assert normalized((dry / name).read_text(), tmp_path, root) in normalized(out.getvalue(), tmp_path, root)
    scripts = {name: (dry / name).read_text() for name in written}
    assert "#SBATCH --array=0-2%3" in scripts["00-1001.sbatch"] and "#SBATCH --cpus-per-task=8" in scripts["00-1001.sbatch"]
    assert "#SBATCH --dependency=afterok:1001" in scripts["01-1002.sbatch"]
    commands = scripts["commands.txt"].splitlines()
    assert [c.split()[0] for c in commands] == ["1001_0", "1001_1", "1001_2", "1002"]
    assert [c.split("--part ")[-1] for c in commands[:3]] == ["1/3", "2/3", "3/3"] and "--workers 7" in commands[0]


def test_parts_run_through_submitit_local_executor(corpus, one_and_three, tmp_path):
    root, tokenizer, inputs = corpus
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = shards_main(["--tokenizer", str(tokenizer.path), "--input", *inputs, "--out", str(tmp_path / "local"),
                            "--launcher", "submitit-local", "--parts", "2", "--unit-bytes", str(UNIT), "--workers", "1",
                            "--max-tokens-per-file", "2000"])
    assert code == 0, out.getvalue()
    index = json.loads((tmp_path / "local" / "index.json").read_text())
    assert index["parts"] == 2
    assert index["files"] == json.loads((one_and_three[0] / "index.json").read_text())["files"]


def test_byte_ranges_tile_a_file_at_every_cut(tmp_path):
    """Ranges of any size read every line once, in order, with the file's own line numbers."""
    from data_pipelines.records import Record, iter_records, line_base

    lines = ['{"text": "a"}', "", '{"text": "bb"}', "{bad", '{"text": "ccc"}', '{"text": "d"}']
    path = tmp_path / "f.jsonl"
    path.write_text("\ufeff" + "\n".join(lines) + "\n")
    whole = [(item.line, getattr(item, "data", None)) for item in iter_records(path)]
    size = path.stat().st_size
    for unit in range(1, size + 2):
        tiled = [(item.line + line_base(path, start), getattr(item, "data", None))
                 for start in range(0, size, unit) for item in iter_records(path, (start, min(start + unit, size)))]
        assert tiled == whole, unit
    assert [line for line, data in whole] == [1, 3, 4, 5, 6] and isinstance(next(iter_records(path)), Record)
