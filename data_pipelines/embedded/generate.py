"""Write the embedded dataset (images, LLaVA / ShareGPT JSON, corpus, eval, manifest) and the CLI.

Determinism: every random stream is `numpy.random.default_rng([stream, seed, ...])`, so the same seed, size
and image size give byte-identical files. Each scene's image and text come from streams keyed by the scene
index, so a scene looks the same whatever the dataset size; which split it lands in is a seeded permutation.

Re-runs: `manifest.json` is written last and lists the sha256 of every file. When it exists, was made with
the same seed, size and image size, and every file it lists is still there with that hash, `generate`
returns at once without writing anything (pass force=True / --force to regenerate anyway). Each file is
written under a temporary name and renamed when complete, so a killed run never leaves a half file.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from data_pipelines.atomic import write_bytes
from . import world

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
TEXT_ONLY_FRACTION = 0.1  # share of llava_instruct records without an image, as in LLaVA mix665k
# Totals over the three splits; each is divided by SPLIT_FRACTIONS.
# `turns`: fewest and most question-answer turns per image conversation (llava_instruct).
SIZES: dict[str, dict] = {
    "tiny": {"scenes": 120, "corpus": 150, "sharegpt": 90, "turns": (1, 3)},
    "small": {"scenes": 800, "corpus": 2000, "sharegpt": 800, "turns": (1, 3)},
    "demo": {"scenes": 4000, "corpus": 8000, "sharegpt": 3000, "turns": (4, 8)},
}
FORMAT, VERSION = "mvlm-embedded", 4  # 2: the demo size asks 4 to 8 questions per image conversation; 3: labels_*.json; 4: sizes among the labels, object boxes (regions)
CAPTION_PROMPTS = ("Describe the image briefly.", "Write a short caption for the picture.",
                   "What does the image show?", "Give a one-line description of this image.")
# Stream ids keep the random sequences of different outputs independent of one another.
_SPLIT, _SCENE, _CONV, _EVAL, _TEXT, _SHAREGPT, _CORPUS, _SHUFFLE, _PROMPT = range(9)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(list(key))


def split_scenes(n_scenes: int, seed: int) -> dict[str, list[int]]:
    """Disjoint, sorted scene indices per split from one seeded permutation."""
    perm = _rng(_SPLIT, seed).permutation(n_scenes)
    n_val, n_test = round(n_scenes * SPLIT_FRACTIONS["val"]), round(n_scenes * SPLIT_FRACTIONS["test"])
    parts = {"val": perm[:n_val], "test": perm[n_val:n_val + n_test], "train": perm[n_val + n_test:]}
    return {s: sorted(int(i) for i in parts[s]) for s in SPLITS}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Writer:
    """Writes files atomically under `root` and remembers each one's sha256 for the manifest."""

    def __init__(self, root: Path):
        self.root, self.files = root, {}

    def bytes(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, data)
        self.files[rel] = _sha256(data)

    def json(self, rel: str, obj) -> None:
        self.bytes(rel, (json.dumps(obj, indent=1) + "\n").encode())

    def jsonl(self, rel: str, rows: list[dict]) -> None:
        self.bytes(rel, "".join(json.dumps(r) + "\n" for r in rows).encode())


def _read_manifest(out: Path) -> dict | None:
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


def _up_to_date(out: Path, manifest: dict | None, params: dict) -> bool:
    """True when the manifest has these parameters and every file it lists is intact (hash checked)."""
    if manifest is None or any(manifest.get(k) != v for k, v in params.items()):
        return False
    try:
        return all(_sha256((out / rel).read_bytes()) == h for rel, h in manifest["files"].items())
    except (OSError, KeyError, AttributeError):
        return False


def _write_split(w: _Writer, split: int, name: str, scene_ids: list[int], seed: int, image_size: int,
                 n_corpus: int, n_sharegpt: int, turns: tuple[int, int]) -> dict[str, int]:
    captions, instruct, evals, scenes, image_labels = [], [], [], [], []
    for turn, idx in enumerate(scene_ids):
        sid = f"{idx:06d}"
        image = f"{name}/{sid}.png"
        scene = world.sample_scene(_rng(_SCENE, seed, idx))
        w.bytes(f"images/{image}", world.png_bytes(world.render(scene, image_size)))
        scenes.append({"id": sid, "image": image, "objects": scene.to_json(image_size)})
        image_labels.append({"id": sid, "image": image, "labels": world.labels(scene),
                             "regions": world.regions(scene, image_size)})
        prompt = CAPTION_PROMPTS[int(_rng(_PROMPT, seed, idx).integers(len(CAPTION_PROMPTS)))]
        captions.append({"id": sid, "image": image, "conversations": [
            {"from": "human", "value": "<image>\n" + prompt}, {"from": "gpt", "value": world.caption(scene)}]})
        instruct.append({"id": sid, "image": image,
                         "conversations": world.image_conversation(scene, _rng(_CONV, seed, idx), turns)})
        evals.append({"id": sid, "image": image, **world.eval_question(scene, _rng(_EVAL, seed, idx), turn)})
    n_text = round(len(scene_ids) * TEXT_ONLY_FRACTION / (1 - TEXT_ONLY_FRACTION))
    rng = _rng(_TEXT, seed, split)
    instruct += [{"id": f"text-{name}-{i:06d}", "conversations": world.text_conversation(rng)}
                 for i in range(n_text)]
    order = _rng(_SHUFFLE, seed, split).permutation(len(instruct))  # interleave the text-only records
    instruct = [instruct[int(i)] for i in order]
    rng = _rng(_SHAREGPT, seed, split)
    sharegpt = [{"id": f"sharegpt-{name}-{i:06d}", "conversations": world.text_conversation(rng, chat=True)}
                for i in range(n_sharegpt)]
    rng = _rng(_CORPUS, seed, split)
    corpus = [{"text": world.corpus_document(rng), "source": "embedded"} for _ in range(n_corpus)]
    w.json(f"llava_caption_{name}.json", captions)
    w.json(f"llava_instruct_{name}.json", instruct)
    w.json(f"sharegpt_{name}.json", sharegpt)
    w.jsonl(f"corpus_{name}.jsonl", corpus)
    w.json(f"eval_{name}.json", evals)
    w.json(f"scenes_{name}.json", scenes)
    w.json(f"labels_{name}.json", image_labels)
    return {"scenes": len(scene_ids), "images": len(scene_ids), "llava_caption": len(captions),
            "llava_instruct": len(instruct), "llava_instruct_text_only": n_text, "sharegpt": len(sharegpt),
            "corpus": len(corpus), "eval": len(evals)}


def generate(out_dir: str | os.PathLike, seed: int = 0, size: str = "demo", image_size: int = 64,
             force: bool = False) -> Path:
    """Generate the dataset under `out_dir` (skipped when an intact matching one is there); returns manifest.json."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    if not 32 <= image_size <= 1024:
        raise ValueError(f"image_size must be in [32, 1024], got {image_size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    out = Path(out_dir)
    params = {"format": FORMAT, "version": VERSION, "seed": seed, "size": size, "image_size": image_size}
    old = _read_manifest(out)
    if not force and _up_to_date(out, old, params):
        return out / "manifest.json"
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # no manifest until the new files are all in place
    counts, w = SIZES[size], _Writer(out)
    splits = {}
    for i, (name, ids) in enumerate(split_scenes(counts["scenes"], seed).items()):
        frac = SPLIT_FRACTIONS[name]
        splits[name] = _write_split(w, i, name, ids, seed, image_size,
                                    round(counts["corpus"] * frac), round(counts["sharegpt"] * frac),
                                    counts["turns"])
    for rel in set((old or {}).get("files", {})) - set(w.files):  # only files an earlier run of ours wrote
        if (out / rel).resolve().is_relative_to(out.resolve()):
            (out / rel).unlink(missing_ok=True)
    w.json("manifest.json", {**params, "splits": splits, "files": dict(sorted(w.files.items()))})
    return out / "manifest.json"


def main(argv: list[str] | None = None) -> int:
    """CLI: python -m data_pipelines.embedded --out DIR [--seed 0] [--size demo] [--image-size 64]."""
    ap = argparse.ArgumentParser(prog="python -m data_pipelines.embedded", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", choices=list(SIZES), default="demo")
    ap.add_argument("--image-size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--force", action="store_true", help="regenerate even if an intact matching set exists")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    try:
        path = generate(args.out, args.seed, args.size, args.image_size, args.force)
    except ValueError as e:
        ap.error(str(e))
    manifest = json.loads(path.read_text())
    summary = ", ".join(f"{s}: {c['images']} images, {c['corpus']} docs" for s, c in manifest["splits"].items())
    print(f"{path} ({summary}; {len(manifest['files'])} files, {time.perf_counter() - start:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
