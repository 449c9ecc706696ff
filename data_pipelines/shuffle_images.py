"""The image-shuffled control: a LLaVA-format file whose images are permuted among its records.

  python -m data_pipelines.shuffle_images IN.json OUT.json [--seed 0]   (also `mvlm data shuffle-images`)

Every record keeps its conversation; the `image` fields of the records that have one are permuted by a
seeded permutation (a record keeps its own image only by chance). A model
trained on the output sees the same images, questions and answers as on the input, but with no relation
between them, so its accuracy shows what the training data teaches without looking: if a recipe trained
on the shuffled file scores as well as on the real one, its accuracy does not come from the image.

Records that cannot be read are counted and reported, and the run stops (a control built from part of a
file would not be the same recipe). The output is written under a temporary name and renamed when complete.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from data_pipelines.atomic import write_bytes
from data_pipelines.records import Problem, iter_records


def shuffle_images(records: list[dict], seed: int = 0) -> list[dict]:
    """Copies of `records` with the images of those that have one permuted among them."""
    with_image = [i for i, record in enumerate(records) if "image" in record]
    order = np.random.default_rng(seed).permutation(len(with_image))
    out = [dict(record) for record in records]
    for target, source in zip(with_image, order):
        out[target]["image"] = records[with_image[int(source)]]["image"]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_pipelines.shuffle_images", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="LLaVA-format file (.json list or .jsonl)")
    parser.add_argument("output", help="where to write the shuffled file (a JSON list)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        items = list(iter_records(args.input))
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    problems = [item for item in items if isinstance(item, Problem)]
    if problems:
        for problem in problems[:10]:
            print(f"error: {problem}", file=sys.stderr)
        print(f"error: {len(problems)} unreadable record(s) in {args.input}; nothing written", file=sys.stderr)
        return 1
    records = shuffle_images([item.data for item in items], args.seed)
    out = Path(args.output)
    write_bytes(out, (json.dumps(records, indent=1) + "\n").encode())
    moved = sum(a.get("image") != b.get("image") for a, b in zip(records, (item.data for item in items)))
    print(f"{out}: {len(records)} records, {sum('image' in r for r in records)} with an image, "
          f"{moved} of them now with another record's image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
