"""What a shard directory records, and the merge of its parts into `index.json`.

  python -m data_pipelines.shard_index --out SHARD_DIR [--parts N]   (also `mvlm data merge ...`)

Layout: `part-KEY-NNNN.bin` token files and a `part-KEY.json` manifest per unit (data_pipelines/partition.py),
`parts/IIII-of-NNNN.json` per part of a run split over N parts (hosts), and `index.json`, the merge of all
parts: the units' files in canonical order (the token stream the pretraining pipeline reads), token and
document counts per source, and every skipped record, counted by reason, per part and with examples
(file:line). The merge refuses a missing part, a part made with another tokenizer, dtype or BOS setting,
and a part that is stale (its inputs changed since, or its files are gone), naming the part.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from data_pipelines.atomic import write_bytes
from data_pipelines.partition import Unit, part_name, part_units, plan_units

INDEX_FILE = "index.json"
FORMAT = "mvlm-token-shards/1"
PART_FORMAT = "mvlm-token-shards-part/1"
PARTS_DIR = "parts"
MAX_EXAMPLES = 5
_PART_FILE = re.compile(r"(\d+)-of-(\d+)\.json")


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, (json.dumps(data, indent=1) + "\n").encode())


def part_path(out_dir: Path, part: int, parts: int) -> Path:
    return Path(out_dir) / PARTS_DIR / f"{part:04d}-of-{parts:04d}.json"


def unit_identity(unit: Unit, tokenizer_sha256: str, dtype: np.dtype, bos: bool) -> dict:
    """What must match for a previous run's output of this unit to be reused (a whole input keeps the
    identity of earlier versions, so their outputs stay valid)."""
    identity = {"input": unit.source, "tokenizer_sha256": tokenizer_sha256, "dtype": np.dtype(dtype).name, "bos": bos,
                "input_bytes": unit.input_bytes, "input_mtime_ns": unit.input_mtime_ns}
    return identity if unit.end is None else {**identity, "start": unit.start, "end": unit.end}


def unit_record(unit: Unit) -> dict:
    """A unit as a part index lists it."""
    return {"key": unit.key, **dataclasses.asdict(unit)}


def manifest_path(out_dir: Path, unit: Unit) -> Path:
    return Path(out_dir) / f"part-{unit.key}.json"


def completed(out_dir: Path, unit: Unit, identity: dict) -> tuple[dict | None, str]:
    """(the manifest of a unit a previous run finished with this identity, "") or (None, why not)."""
    path = manifest_path(out_dir, unit)
    if not path.is_file():
        return None, f"{path.name} missing"
    manifest = json.loads(path.read_text())
    changed = [key for key, value in identity.items() if key != "input" and manifest.get(key) != value]
    if changed:
        return None, f"{path.name} was written with another {', '.join(changed)}"
    itemsize = np.dtype(identity["dtype"]).itemsize
    for file in manifest["files"]:
        if not (out_dir / file["name"]).is_file() or (out_dir / file["name"]).stat().st_size != file["tokens"] * itemsize:
            return None, f"{file['name']} missing or truncated"
    return manifest, ""


def _sum_sources(manifests: Sequence[dict]) -> dict[str, dict[str, int]]:
    sources: dict[str, dict[str, int]] = {}
    for manifest in manifests:
        for name, counts in manifest["sources"].items():
            total = sources.setdefault(name, {"tokens": 0, "documents": 0})
            total["tokens"] += counts["tokens"]
            total["documents"] += counts["documents"]
    return sources


def sum_skipped(manifests: Sequence[dict]) -> tuple[dict[str, int], dict[str, list[str]]]:
    """(count per reason, first examples per reason as "file:line: reason: detail") over unit manifests."""
    counts: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    for manifest in manifests:
        for reason, count in manifest["skipped"].get("counts", {}).items():
            counts[reason] = counts.get(reason, 0) + count
        for reason, lines in manifest["skipped"].get("examples", {}).items():
            kept = examples.setdefault(reason, [])
            kept += lines[:MAX_EXAMPLES - len(kept)]
    return counts, examples


def _found_parts(out_dir: Path) -> dict[tuple[int, int], Path]:
    found = {}
    for path in (out_dir / PARTS_DIR).glob("*-of-*.json"):
        if match := _PART_FILE.fullmatch(path.name):
            found[int(match[1]), int(match[2])] = path
    return found


def _settings_difference(part: dict, reference: dict) -> str:
    """How `part` was made differently from `reference` (tokenizer, dtype, BOS, inputs), or ""."""
    name, ref_name = (f"part {part_name(p['part'], p['parts'])}" for p in (part, reference))
    if part["tokenizer"]["sha256"] != reference["tokenizer"]["sha256"]:
        return (f"{name} was tokenized with {part['tokenizer']['path']} (sha256 {part['tokenizer']['sha256'][:12]}), "
                f"{ref_name} with {reference['tokenizer']['path']} (sha256 {reference['tokenizer']['sha256'][:12]})")
    if part["dtype"] != reference["dtype"]:
        return f"{name} wrote {part['dtype']} tokens, {ref_name} {reference['dtype']}"
    if part["bos_prepended"] != reference["bos_prepended"]:
        with_bos, without = (name, ref_name) if part["bos_prepended"] else (ref_name, name)
        return f"{with_bos} put BOS before every document (--bos), {without} did not"
    if (part["inputs"], part["unit_bytes"]) != (reference["inputs"], reference["unit_bytes"]):
        return f"{name} was run over other inputs (or --unit-bytes) than {ref_name}"
    return ""


def merge_parts(out_dir: str | os.PathLike, parts: int | None = None) -> dict:
    """Check the parts of `out_dir` and write its `index.json`; returns the index."""
    out_dir = Path(out_dir)
    found = _found_parts(out_dir)
    counts = sorted({n for _, n in found}) if parts is None else [parts]
    if not counts:
        raise FileNotFoundError(f"{out_dir / PARTS_DIR}: no part indexes; run `mvlm data shard ... --part I/N` first")
    if len(counts) > 1:
        raise ValueError(f"{out_dir}: parts of runs split {' and '.join(map(str, counts))} ways: pass --parts N")
    parts = counts[0]
    missing = [part_name(i, parts) for i in range(1, parts + 1) if (i, parts) not in found]
    if missing:
        raise ValueError(f"{out_dir}: part(s) {', '.join(missing)} missing: run `mvlm data shard ... --part I/{parts}` "
                         "for each (a re-run skips what it finished)")
    indexes = [json.loads(found[i, parts].read_text()) for i in range(1, parts + 1)]
    for index in indexes[1:]:
        if difference := _settings_difference(index, indexes[0]):
            raise ValueError(f"{out_dir}: cannot merge: {difference}; re-run one of them with the other's settings")
    reference = indexes[0]
    try:
        units = plan_units(reference["inputs"], reference["unit_bytes"])
    except OSError as error:
        raise ValueError(f"{out_dir}: cannot merge, an input is gone: {error}") from error
    manifests = []
    for index in indexes:
        name = part_name(index["part"], parts)
        mine = part_units(units, index["part"], parts)
        if [unit_record(u) for u in mine] != index["units"]:
            now, then = ({(u["source"], u["input_bytes"], u["input_mtime_ns"]) for u in listed}
                         for listed in ([unit_record(u) for u in mine], index["units"]))
            changed = sorted({source for source, *_ in now ^ then})
            raise ValueError(f"{out_dir}: part {name} is stale: {', '.join(changed[:3])} changed since it ran "
                             f"(size or modification time); re-run `mvlm data shard ... --part {name}`")
        for unit in mine:
            manifest, why = completed(out_dir, unit, unit_identity(unit, reference["tokenizer"]["sha256"],
                                                                   reference["dtype"], reference["bos_prepended"]))
            if manifest is None:
                raise ValueError(f"{out_dir}: part {name} is stale or incomplete ({unit.describe()}: {why}); "
                                 f"re-run `mvlm data shard ... --part {name}`")
            manifests.append((unit, manifest))
    files = [dict(file, input=unit.source, **({"range": [unit.start, unit.end]} if unit.end is not None else {}))
             for unit, manifest in manifests for file in manifest["files"]]
    skipped, examples = sum_skipped([m for _, m in manifests])
    index = {"format": FORMAT, "dtype": reference["dtype"], "vocab_size": reference["vocab_size"],
             "eos_id": reference["eos_id"], "bos_id": reference["bos_id"], "bos_prepended": reference["bos_prepended"],
             "tokenizer": reference["tokenizer"],
             "total_tokens": sum(f["tokens"] for f in files), "total_documents": sum(f["documents"] for f in files),
             "files": files, "sources": _sum_sources([m for _, m in manifests]), "skipped": skipped,
             "skipped_examples": examples,
             "skipped_by_part": {part_name(i["part"], parts): i["skipped"] for i in indexes},
             "inputs": reference["inputs"], "unit_bytes": reference["unit_bytes"], "parts": parts}
    write_json(out_dir / INDEX_FILE, index)
    return index


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_pipelines.shard_index", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the shard directory the parts wrote")
    parser.add_argument("--parts", type=int, help="N of the run (default: the one N found)")
    args = parser.parse_args(argv)
    try:
        index = merge_parts(args.out, args.parts)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {Path(args.out) / INDEX_FILE}: {index['total_tokens']:,} tokens in {len(index['files'])} file(s) "
          f"from {index['total_documents']:,} documents of {index['parts']} part(s); "
          f"skipped {sum(index['skipped'].values())} record(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
