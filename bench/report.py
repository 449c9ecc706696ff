"""Benchmark results in docs/PERFORMANCE.md: the current figure of each benchmark, with date, machine and
command; and the one timing loop of the jitted-function benchmarks."""
from __future__ import annotations

import datetime
import os
import platform
import re
import time
from pathlib import Path
from typing import Any, Callable

from mvlm_jax.atomic import atomic_file


def cpu_model() -> str:
    """The CPU's model name and its widest SIMD (the same 2-core job runs at very different speeds on
    an AVX-512 Xeon and an AVX2 EPYC, so every result names its CPU)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    simd = next((f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags), "")
    return f"{name} ({simd})" if simd else name


def machine_description() -> str:
    import jax

    devices = jax.devices()
    return (f"{platform.machine()} {cpu_model()}, {os.cpu_count()} CPU cores, "
            f"{devices[0].platform} x{len(devices)} ({devices[0].device_kind}), jax {jax.__version__}").replace("  ", " ")


def mean_seconds(fn: Callable[..., Any], *args: Any, repeats: int = 10) -> float:
    """Mean wall seconds of `fn(*args)` (a jitted function) over `repeats` calls after one warm-up call that
    compiles it; waits for the device before reading the clock."""
    import jax

    jax.block_until_ready(fn(*args))
    started = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - started) / repeats


def append_result(report: Path, title: str, command: str, lines: list[str], note: str = "") -> None:
    """Write one dated section to `report` (created with a header when missing): it replaces the section
    of the same title and command, so the file holds the current figure of each benchmark configuration,
    not a history."""
    if not report.exists():
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text("# Performance\n\nEvery number here comes from a script in `bench/` (`make bench`); "
                          "each section says when, where and how it was measured.\n")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = [f"## {title}\n", f"- Date: {stamp}", f"- Machine: {machine_description()}", f"- Command: `{command}`"]
    if note:
        section.append(f"- {note}")
    new = "\n".join(section + [""] + lines)
    # the header, then "## " sections; the first one of this title and command is replaced, later ones dropped
    parts = [part.strip("\n") for part in re.split(r"(?m)^(?=## )", report.read_text())]
    head, sections = parts[0], parts[1:]
    same = [i for i, text in enumerate(sections)
            if text.splitlines()[0].strip() == f"## {title}" and f"- Command: `{command}`" in text.splitlines()]
    if same:
        sections = [new if i == same[0] else text for i, text in enumerate(sections) if i == same[0] or i not in same]
    else:
        sections.append(new)
    with atomic_file(report, force=True) as partial:
        partial.write_text("\n\n".join([head] + sections) + "\n")
