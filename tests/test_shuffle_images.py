"""`mvlm data shuffle-images`: the image-shuffled control keeps every conversation and permutes images."""
import collections
import json
import subprocess
import sys

from data_pipelines.shuffle_images import main


def records(n: int) -> list[dict]:
    out = [{"id": str(i), "image": f"img/{i}.png",
            "conversations": [{"from": "human", "value": f"<image>\nQ{i}"}, {"from": "gpt", "value": f"A{i}"}]}
           for i in range(n)]
    out.insert(3, {"id": "text", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]})
    return out


def test_images_are_permuted_and_conversations_kept(tmp_path, capsys):
    source = records(50)
    (tmp_path / "in.json").write_text(json.dumps(source))
    assert main([str(tmp_path / "in.json"), str(tmp_path / "out.json"), "--seed", "3"]) == 0
    shuffled = json.loads((tmp_path / "out.json").read_text())
    assert [r["conversations"] for r in shuffled] == [r["conversations"] for r in source]
    assert [r["id"] for r in shuffled] == [r["id"] for r in source]
    assert "image" not in shuffled[3]  # a text-only record stays text-only
    images = collections.Counter(r["image"] for r in shuffled if "image" in r)
    assert images == collections.Counter(r["image"] for r in source if "image" in r)  # each image once
    moved = sum(a["image"] != b["image"] for a, b in zip(shuffled, source) if "image" in a)
    assert moved >= 45 and f"{moved} of them now with another record's image" in capsys.readouterr().out
    assert main([str(tmp_path / "in.json"), str(tmp_path / "again.json"), "--seed", "3"]) == 0
    assert (tmp_path / "again.json").read_text() == (tmp_path / "out.json").read_text()  # seeded


def test_unreadable_records_stop_the_run_and_name_the_line(tmp_path):
    (tmp_path / "in.jsonl").write_text(json.dumps(records(2)[0]) + "\n{broken\n")
    done = subprocess.run([sys.executable, "-m", "mvlm_jax.cli", "data", "shuffle-images", str(tmp_path / "in.jsonl"),
                           str(tmp_path / "out.json")], capture_output=True, text=True)
    assert done.returncode == 1 and "in.jsonl:2" in done.stderr and "nothing written" in done.stderr
    assert not (tmp_path / "out.json").exists() and not list(tmp_path.glob(".out.json*"))
