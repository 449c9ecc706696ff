"""Tests for data_pipelines.records / validate / check: every bad-data case is named by file:line and reason."""
import gzip
import json
import os

import numpy as np
import pytest
import zstandard
from PIL import Image

from data_pipelines.check import main
from data_pipelines.records import Problem, Record, iter_records
from data_pipelines.validate import SkipReport, normalized_turns, validate_file


def turns(*pairs):
    return [{"from": f, "value": v} for f, v in pairs]


def good(i, image=None):
    q = "<image>\nWhat is this?" if image else "Hello?"
    rec = {"id": str(i), "conversations": turns(("human", q), ("gpt", "A cat."))}
    if image:
        rec["image"] = image
    return rec


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_png(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "images"
    write_png(root / "a.png")
    return root


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def check_one(capsys, path, reason, line, fmt="llava", root=None):
    """Run the CLI on a file with one bad record and assert the exit code and the file:line: reason."""
    args = ["--format", fmt, "--input", path] + (["--image-root", root] if root else [])
    code, _, err = cli(capsys, *args)
    assert code == 1, err
    assert f"{path}:{line}: {reason}:" in err, err
    return err


def test_malformed_json_list(tmp_path, capsys):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"id": "1", "conversations": []},\n  {"id": "2", "conversations": [}\n]\n')
    check_one(capsys, path, "malformed_json", 3)


def test_malformed_jsonl_other_lines_still_read(tmp_path, capsys):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(good(1)) + "\n{not json\n" + json.dumps(good(3)) + "\n")
    err = check_one(capsys, path, "malformed_json", 2)
    assert err.count(": malformed_json:") == 1
    assert [getattr(x, "line") for x in iter_records(path)] == [1, 2, 3]
    assert isinstance(list(iter_records(path))[2], Record)


def test_missing_field(tmp_path, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", [good(1), good(2), {"id": "3", "conversations": [{"from": "human"}]}])
    err = check_one(capsys, path, "missing_field", 3)
    assert "'value'" in err


def test_non_utf8_jsonl(tmp_path, capsys):
    path = tmp_path / "d.jsonl"
    path.write_bytes(json.dumps(good(1)).encode() + b'\n{"id": "\xff\xfe"}\n' + json.dumps(good(3)).encode() + b"\n")
    err = check_one(capsys, path, "non_utf8", 2)
    assert "0xff" in err


def test_non_utf8_json_list(tmp_path, capsys):
    path = tmp_path / "d.json"
    body = json.dumps([good(1), good(2), good(3)], indent=1)
    first_bad = body.index('"2"')
    path.write_bytes(body[:first_bad].encode() + b'"\xc3("' + body[first_bad + 3:].encode())
    line = body[:first_bad].count("\n") + 1
    check_one(capsys, path, "non_utf8", line)
    # One bad byte costs one record, not the file.
    assert sum(isinstance(x, Record) for x in iter_records(path)) == 2


def test_empty_conversation(tmp_path, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", [good(1), {"id": "2", "conversations": []}])
    check_one(capsys, path, "empty_conversation", 2)


def test_not_alternating(tmp_path, capsys):
    bad = {"id": "2", "conversations": turns(("gpt", "Hi, I am a bot."), ("human", "ok"), ("gpt", "ok"))}
    path = write_jsonl(tmp_path / "d.jsonl", [good(1), bad])
    check_one(capsys, path, "not_alternating", 2, fmt="sharegpt")


def test_trailing_human_turn_is_not_alternating(tmp_path, capsys):
    bad = {"id": "1", "conversations": turns(("human", "q"), ("gpt", "a"), ("human", "and?"))}
    err = check_one(capsys, write_jsonl(tmp_path / "d.jsonl", [bad]), "not_alternating", 1, fmt="sharegpt")
    assert "no answer" in err


def test_sharegpt_aliases_and_leading_system(tmp_path, capsys):
    rec = {"id": "1", "conversations": turns(("system", "be nice"), ("user", "q"), ("assistant", "a"))}
    path = write_jsonl(tmp_path / "d.jsonl", [rec, {"id": "2", "conversations": turns(("bing", "q"))}])
    records, report = validate_file(path, "sharegpt")
    assert normalized_turns(records[0]) == turns(("human", "q"), ("gpt", "a"))
    assert report.counts == {"bad_role": 1} and report.examples["bad_role"][0].line == 2


def test_placeholder_without_image(tmp_path, capsys):
    bad = {"id": "2", "conversations": turns(("human", "<image>\nWhat?"), ("gpt", "A dog."))}
    path = write_jsonl(tmp_path / "d.jsonl", [good(1), bad])
    check_one(capsys, path, "placeholder_without_image", 2)


def test_image_without_placeholder(tmp_path, capsys, images):
    bad = {"id": "2", "image": "a.png", "conversations": turns(("human", "What?"), ("gpt", "A dog."))}
    path = write_jsonl(tmp_path / "d.jsonl", [good(1, "a.png"), bad])
    check_one(capsys, path, "image_without_placeholder", 2, root=images)


def test_two_placeholders_for_one_image(tmp_path, capsys, images):
    bad = good(1, "a.png")
    bad["conversations"][0]["value"] += "<image>"
    check_one(capsys, write_jsonl(tmp_path / "d.jsonl", [bad]), "placeholder_without_image", 1, root=images)


def test_missing_image(tmp_path, capsys, images):
    path = write_jsonl(tmp_path / "d.jsonl", [good(1, "a.png"), good(2, "sub/nope.png")])
    check_one(capsys, path, "missing_image", 2, root=images)


def test_corrupt_image(tmp_path, capsys, images):
    (images / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    (images / "garbage.png").write_bytes(b"this is not an image at all")
    path = write_jsonl(tmp_path / "d.jsonl", [good(1, "a.png"), good(2, "bad.png"), good(3, "garbage.png")])
    check_one(capsys, path, "corrupt_image", 2, root=images)
    check_one(capsys, path, "corrupt_image", 3, root=images)


def test_truncated_jpeg_caught_by_full_load(tmp_path, capsys, images):
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(images / "full.jpg")
    data = (images / "full.jpg").read_bytes()
    (images / "cut.jpg").write_bytes(data[: len(data) // 2])  # JPEG verify() passes this; only load() fails
    err = check_one(capsys, write_jsonl(tmp_path / "d.jsonl", [good(1, "cut.jpg")]), "corrupt_image", 1, root=images)
    assert "truncated" in err


def test_image_escapes_root_via_dotdot(tmp_path, capsys, images):
    write_png(tmp_path / "secret.png")
    path = write_jsonl(tmp_path / "d.jsonl", [good(1, "a.png"), good(2, "../secret.png")])
    check_one(capsys, path, "image_outside_root", 2, root=images)


def test_image_escapes_root_via_absolute_path(tmp_path, capsys, images):
    write_png(tmp_path / "secret.png")
    path = write_jsonl(tmp_path / "d.jsonl", [good(1, str(tmp_path / "secret.png"))])
    check_one(capsys, path, "image_outside_root", 1, root=images)


def test_image_escapes_root_via_symlink(tmp_path, capsys, images):
    write_png(tmp_path / "secret.png")
    (images / "link.png").symlink_to(tmp_path / "secret.png")
    (images / "inside.png").symlink_to(images / "a.png")  # a link that stays inside is fine
    path = write_jsonl(tmp_path / "d.jsonl", [good(1, "inside.png"), good(2, "link.png")])
    err = check_one(capsys, path, "image_outside_root", 2, root=images)
    assert ":1:" not in err


def test_too_long_via_validate_file(tmp_path):
    recs = [good(1), good(2), good(3)]
    recs[1]["conversations"][1]["value"] = "word " * 50
    path = write_jsonl(tmp_path / "d.jsonl", recs)

    def count_tokens(rec: Record) -> int:
        return sum(len(t["value"].split()) for t in rec.data["conversations"])

    records, report = validate_file(path, "sharegpt", seq_len=20, count_tokens=count_tokens)
    assert [r.data["id"] for r in records] == ["1", "3"]
    assert report.counts == {"too_long": 1}
    assert str(report.examples["too_long"][0]).startswith(f"{path}:2: too_long: 51 tokens > seq_len 20")


def test_skip_bad_counts_and_kept(tmp_path, capsys, images):
    recs = [good(1, "a.png"), good(2), {"id": "3", "conversations": []}, good(4, "missing.png"),
            {"id": "5", "conversations": []}, {"id": "6"}, good(7, "a.png")]
    path = tmp_path / "d.jsonl"
    write_jsonl(path, recs)
    with path.open("a") as fh:
        fh.write("[1, 2\n")
    code, out, _ = cli(capsys, "--format", "llava", "--input", path, "--image-root", images, "--skip-bad",
                       "--max-examples", "1")
    assert code == 0
    assert "skipped 5 record(s), kept 3" in out
    for reason, n in [("empty_conversation", 2), ("missing_image", 1), ("missing_field", 1), ("malformed_json", 1)]:
        assert f"  {reason}: {n}\n" in out + "\n", out
    assert f"{path}:3: empty_conversation" in out and f"{path}:5: empty_conversation" not in out
    assert f"{path}:8: malformed_json" in out


def test_clean_llava_file(tmp_path, capsys, images):
    write_png(images / "sub" / "b.png", seed=1)
    path = tmp_path / "d.json"
    path.write_text(json.dumps([good(1, "a.png"), good(2, "sub/b.png"), good(3)], indent=2))
    code, out, err = cli(capsys, "--format", "llava", "--input", path, "--image-root", images)
    assert code == 0, err
    assert "3 records OK" in out and err == ""


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_compressed_text_jsonl(tmp_path, capsys, suffix):
    docs = [{"text": f"document {i}", "meta": {"source": "c4"}} for i in range(5)] + [{"text": ""}]
    raw = "".join(json.dumps(d) + "\n" for d in docs).encode()
    data = gzip.compress(raw) if suffix.endswith("gz") else zstandard.ZstdCompressor().compress(raw)
    path = tmp_path / ("shard" + suffix)
    path.write_bytes(data)
    items = list(iter_records(path))
    assert [(r.line, r.data["text"]) for r in items[:5]] == [(i + 1, f"document {i}") for i in range(5)]
    assert items[0].data["meta"] == {"source": "c4"}  # other fields are kept
    err = check_one(capsys, path, "missing_field", 6, fmt="text")
    assert "empty" in err


def test_truncated_zst_is_reported_not_dropped(tmp_path):
    raw = "".join(json.dumps({"text": f"doc {i} " * 20}) + "\n" for i in range(5000)).encode()
    data = zstandard.ZstdCompressor().compress(raw)
    path = tmp_path / "cut.jsonl.zst"
    path.write_bytes(data[: len(data) // 2])
    *records, last = iter_records(path)
    assert 0 < len(records) < 5000 and all(isinstance(r, Record) for r in records)
    assert last.reason == "malformed_json" and last.line == len(records) + 1 and "truncated" in last.detail


def test_plain_txt_document(tmp_path, capsys):
    path = tmp_path / "doc.txt"
    path.write_text("line one\nline two\n")
    assert list(iter_records(path)) == [Record(str(path), 1, {"text": "line one\nline two\n"})]
    code, out, _ = cli(capsys, "--format", "text", "--input", path)
    assert code == 0 and "1 records OK" in out


def test_line_numbers_in_pretty_printed_list(tmp_path, capsys):
    path = tmp_path / "d.json"
    path.write_text(
        '[\n'
        '  {"id": "a",\n'
        '   "conversations": [\n'
        '     {"from": "human", "value": "hi"},\n'
        '     {"from": "gpt", "value": "yo"}]\n'
        '  },\n'
        '  {"id": "b", "conversations": []}\n'
        ']\n')
    assert [x.line for x in iter_records(path)] == [2, 7]
    check_one(capsys, path, "empty_conversation", 7)


def test_missing_and_unknown_input_exit_2(tmp_path, capsys):
    code, _, err = cli(capsys, "--format", "llava", "--input", tmp_path / "nope.json")
    assert code == 2 and "nope.json" in err and "no such file" in err
    (tmp_path / "d.csv").write_text("a,b\n")
    code, _, err = cli(capsys, "--format", "llava", "--input", tmp_path / "d.csv")
    assert code == 2 and "cannot tell the layout" in err
    code, _, err = cli(capsys, "--format", "llava", "--input", tmp_path / "d.csv", "--image-root", tmp_path / "x")
    assert code == 2 and "not a directory" in err
    assert cli(capsys, "--format", "yaml", "--input", tmp_path / "d.csv")[0] == 2


def test_skip_report_api():
    report = SkipReport(max_examples=1)
    for line in (3, 9):
        report.add(Problem("f.json", line, "too_long", "x"))
    assert report.total == 2
    assert report.as_dict() == {"total": 2, "counts": {"too_long": 2},
                                "examples": {"too_long": ["f.json:3: too_long: x"]}}
    assert "too_long: 2" in report.format() and "f.json:3: too_long: x" in report.format()
    with pytest.raises(ValueError):
        report.add(Problem("f.json", 1, "made_up", "x"))
