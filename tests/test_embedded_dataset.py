"""The embedded dataset: deterministic, split by scene, well-formed, and its answers need the image."""
import collections
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import data_pipelines.embedded as emb
from data_pipelines.embedded import world

IMAGE_SIZE = 48  # not the default, so "opens at the configured size" means something
ROOT = Path(__file__).resolve().parent.parent


def load(out, name):
    return json.loads((out / name).read_text())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("embedded") / "tiny"
    emb.generate(out, seed=0, size="tiny", image_size=IMAGE_SIZE)
    return out


def solve(question, objects):
    """Answer an image question from scene metadata alone, independently of the generator's code."""
    q = question.lower()
    if q.startswith("describe") or q == "what is in the image?":
        return None  # descriptive; captions are checked separately
    shape = next((s for s in world.SHAPES if re.search(rf"\b{s}\b", q)), None)
    plural = next((s for s, p in world.PLURALS.items() if re.search(rf"\b{p}\b", q)), None)
    color = next((c for c in world.COLORS if re.search(rf"\b{c}\b", q)), None)
    side = next((s for s in ("left", "right", "top", "bottom") if re.search(rf"\b{s}\b", q)), None)
    match = [o for o in objects if (shape is None or o["shape"] == shape) and (color is None or o["color"] == color)
             and (side is None or side in o["position"])]
    if re.search(r"how many (shapes|objects)", q):
        return str(len(objects))
    if plural:
        return str(sum(o["shape"] == plural for o in objects))
    if q.startswith("is there"):
        return "yes" if match else "no"
    if len(match) != 1:
        return None
    (o,) = match
    if "where" in q or "which part" in q:
        return o["position"]
    if "small or large" in q or "large or small" in q:
        return o["size"]
    if "color" in q:
        return o["color"]
    if "shape" in q:
        return o["shape"]
    return None


def test_same_seed_same_bytes_other_seed_differs(tmp_path, tiny):
    a = emb.generate(tmp_path / "a", seed=0, size="tiny", image_size=IMAGE_SIZE)
    again = emb.generate(tmp_path / "b", seed=0, size="tiny", image_size=IMAGE_SIZE)
    other = emb.generate(tmp_path / "c", seed=1, size="tiny", image_size=IMAGE_SIZE)
    ma, mb, mc = (json.loads(p.read_text()) for p in (a, again, other))
    assert ma == mb and a.read_bytes() == again.read_bytes() == (tiny / "manifest.json").read_bytes()
    assert len(ma["files"]) == 3 * 7 + sum(c["images"] for c in ma["splits"].values())  # 7 files per split
    for rel, digest in ma["files"].items():  # the manifest tells the truth about every file
        assert hashlib.sha256((tmp_path / "a" / rel).read_bytes()).hexdigest() == digest
    differing = [rel for rel in ma["files"] if mc["files"].get(rel) != ma["files"][rel]]
    assert len(differing) > 0.9 * len(ma["files"])


def test_splits_are_disjoint_by_scene(tiny):
    seen = {}
    for split in emb.SPLITS:
        ids = {r["id"] for r in load(tiny, f"scenes_{split}.json")}
        images = set()
        for name in ("llava_caption", "llava_instruct", "eval", "scenes"):
            images |= {r["image"] for r in load(tiny, f"{name}_{split}.json") if "image" in r}
        assert images == {f"{split}/{i}.png" for i in ids} and len(ids) >= 10
        for other, other_ids in seen.items():
            assert not ids & other_ids, (split, other)
        seen[split] = ids
    parts = emb.split_scenes(emb.SIZES["tiny"]["scenes"], seed=0)
    assert sorted(i for p in parts.values() for i in p) == list(range(emb.SIZES["tiny"]["scenes"]))


def test_answers_follow_from_the_scene_and_need_the_image(tiny):
    checked = 0
    by_question = collections.defaultdict(set)
    for split in emb.SPLITS:
        scenes = {r["image"]: r["objects"] for r in load(tiny, f"scenes_{split}.json")}
        for r in load(tiny, f"eval_{split}.json"):
            assert r["answer"] in r["choices"] and r["chance"] == pytest.approx(1 / len(r["choices"]))
            assert solve(r["question"], scenes[r["image"]]) == r["answer"], r
            checked += 1
        for r in load(tiny, f"llava_instruct_{split}.json"):
            if "image" not in r:
                continue
            conv = r["conversations"]
            for q, a in zip(conv[::2], conv[1::2]):
                question = q["value"].removeprefix("<image>\n")
                expected = solve(question, scenes[r["image"]])
                if expected is not None:
                    assert expected == a["value"], (question, a["value"], scenes[r["image"]])
                    by_question[question].add(a["value"])
                    checked += 1
        for r in load(tiny, f"llava_caption_{split}.json"):  # the caption names every object
            cap = r["conversations"][1]["value"]
            for o in scenes[r["image"]]:
                assert f"{o['size']} {o['color']} {o['shape']}" in cap
    assert checked > 200
    # The same question has different answers on different images, so text alone cannot be perfect.
    assert sum(len(answers) > 1 for answers in by_question.values()) >= 10
    evals = load(tiny, "eval_train.json")
    groups = collections.defaultdict(collections.Counter)
    for r in evals:
        groups[r["question"]][r["answer"]] += 1
    text_only_best = sum(c.most_common(1)[0][1] for c in groups.values()) / len(evals)
    assert text_only_best < 0.85
    assert len({r["type"] for r in evals}) == len(world.CHOICES)


def test_rendered_pixels_match_the_metadata(tiny):
    areas = collections.defaultdict(list)
    for split in emb.SPLITS:
        for r in load(tiny, f"scenes_{split}.json"):
            img = Image.open(tiny / "images" / r["image"]).convert("RGB")
            for corner in [(0, 0), (0, IMAGE_SIZE - 1), (IMAGE_SIZE - 1, 0), (IMAGE_SIZE - 1, IMAGE_SIZE - 1)]:
                assert img.getpixel(corner) == world.BACKGROUND
            for o in r["objects"]:
                cx, cy = o["center"]
                half = IMAGE_SIZE / 2
                assert o["position"] == f"{'top' if cy < half else 'bottom'} {'left' if cx < half else 'right'}"
                assert img.getpixel((int(cx), int(cy))) == world.COLORS[o["color"]], (r["id"], o)
                area = sum(img.getpixel((x, y)) == world.COLORS[o["color"]]
                           for x in range(int(cx - o["radius"]), int(cx + o["radius"]) + 1)
                           for y in range(int(cy - o["radius"]), int(cy + o["radius"]) + 1))
                areas[o["shape"], o["size"]].append(area)
    for shape in world.SHAPES:  # every large one covers more pixels than any small one of its shape
        if areas[shape, "large"] and areas[shape, "small"]:
            assert min(areas[shape, "large"]) > 1.5 * max(areas[shape, "small"]), shape
    assert sum(bool(v) for v in areas.values()) >= 8
    assert len(set(world.COLORS.values())) == len(world.COLORS)


def check_turns(conv):
    assert len(conv) >= 2 and len(conv) % 2 == 0
    assert [m["from"] for m in conv] == ["human", "gpt"] * (len(conv) // 2)
    assert all(isinstance(m["value"], str) and m["value"] for m in conv)


def test_formats(tiny):
    manifest = load(tiny, "manifest.json")
    assert (manifest["seed"], manifest["size"], manifest["image_size"]) == (0, "tiny", IMAGE_SIZE)
    for split in emb.SPLITS:
        counts = manifest["splits"][split]
        for name in ("llava_caption", "llava_instruct"):
            records = load(tiny, f"{name}_{split}.json")
            assert len(records) == counts[name] and len({r["id"] for r in records}) == len(records)
            for r in records:
                check_turns(r["conversations"])
                text = [m["value"] for m in r["conversations"]]
                if "image" in r:
                    assert text[0].startswith("<image>\n") and sum(t.count("<image>") for t in text) == 1
                    with Image.open(tiny / "images" / r["image"]) as img:
                        assert img.size == (IMAGE_SIZE, IMAGE_SIZE) and img.mode == "RGB"
                else:
                    assert name == "llava_instruct" and not any("<image>" in t for t in text)
        text_only = sum("image" not in r for r in load(tiny, f"llava_instruct_{split}.json"))
        assert text_only == counts["llava_instruct_text_only"] and 0.05 < text_only / counts["llava_instruct"] < 0.2
        for r in load(tiny, f"sharegpt_{split}.json"):
            assert set(r) == {"id", "conversations"} and "<image>" not in json.dumps(r)
            check_turns(r["conversations"])
        lines = (tiny / f"corpus_{split}.jsonl").read_text().splitlines()
        docs = [json.loads(line) for line in lines]
        assert len(docs) == counts["corpus"] and all(d["source"] == "embedded" and d["text"] for d in docs)
        for r in load(tiny, f"eval_{split}.json"):
            assert set(r) == {"id", "image", "type", "question", "answer", "choices", "chance"}
    lengths = [len(json.loads(line)["text"].split()) for line in (tiny / "corpus_train.jsonl").open()]
    assert min(lengths) < 10 < 40 < max(lengths)


def test_rerun_is_skipped_and_a_damaged_set_is_rebuilt(tmp_path):
    out = tmp_path / "d"
    path = emb.generate(out, seed=3, size="tiny")
    files = sorted(p for p in out.rglob("*") if p.is_file())
    mtimes = [p.stat().st_mtime_ns for p in files]
    assert emb.generate(out, seed=3, size="tiny") == path
    assert [p.stat().st_mtime_ns for p in files] == mtimes  # nothing rewritten
    victim = out / "llava_caption_val.json"
    original = victim.read_bytes()
    victim.write_text("[]")
    emb.generate(out, seed=3, size="tiny")
    assert victim.read_bytes() == original and not list(out.rglob(".*tmp*"))


def test_cli_matches_the_function(tmp_path, tiny):
    subprocess.run([sys.executable, "-m", "data_pipelines.embedded", "--out", str(tmp_path / "cli"), "--size",
                    "tiny", "--image-size", str(IMAGE_SIZE)], cwd=ROOT, check=True, capture_output=True)
    assert (tmp_path / "cli" / "manifest.json").read_bytes() == (tiny / "manifest.json").read_bytes()


def test_image_conversations_ask_distinct_questions_within_the_turn_range():
    """`turns` bounds the question-answer turns of an image conversation (the demo size asks 4 to 8, as
    mix665k groups several VQA questions of one image); the questions are distinct, the image is opened once."""
    import numpy as np

    counts = collections.Counter()
    for seed in range(200):
        rng = np.random.default_rng(seed)
        scene = world.sample_scene(rng)
        conv = world.image_conversation(scene, rng, turns=emb.SIZES["demo"]["turns"])
        questions = [m["value"].removeprefix("<image>\n") for m in conv[::2]]
        assert len(set(questions)) == len(questions)
        assert conv[0]["value"].startswith("<image>\n") and sum("<image>" in m["value"] for m in conv) == 1
        counts[len(questions)] += 1
    assert emb.SIZES["demo"]["turns"] == (4, 8) and set(counts) == set(range(4, 9))


def test_the_tokenizer_learns_the_text_as_the_templates_lay_it_out(tmp_path):
    """prepare() trains the tokenizer on each conversation rendered by the template it is trained with
    (the vicuna system prompt and role markers included, no special tokens), so a row spends few tokens on
    them: against a tokenizer trained on the same corpus and turns alone, as before."""
    from data_pipelines.embedded.prepare import TEMPLATE_OF, prepare, rendered
    from data_pipelines.templates import SPECIALS, VICUNA_V1_SYSTEM
    from data_pipelines.tokenizer import Tokenizer, train_tokenizer

    paths = prepare(tmp_path / "data", "tiny", 512, IMAGE_SIZE)
    world_dir = Path(paths["world"])
    record = next(r for r in load(world_dir, "llava_instruct_train.json") if "image" in r)
    text = rendered(record, TEMPLATE_OF["llava_instruct"])
    assert text.startswith(VICUNA_V1_SYSTEM) and " ASSISTANT: " in text
    assert not any(special in text for special in SPECIALS)
    assert all(turn["value"].removeprefix("<image>\n") in text for turn in record["conversations"])

    texts = [json.loads(line)["text"] for line in (world_dir / "corpus_train.jsonl").read_text().splitlines()]
    for name in TEMPLATE_OF:
        texts += [t["value"] for r in load(world_dir, f"{name}_train.json") for t in r["conversations"]]
    turns_only = train_tokenizer(texts, 512, tmp_path / "turns_only.model")
    learnt = Tokenizer(paths["tokenizer"])
    assert len(learnt.encode(VICUNA_V1_SYSTEM)) * 2 < len(turns_only.encode(VICUNA_V1_SYSTEM))
