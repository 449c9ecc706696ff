"""Appending benchmark results to docs/PERFORMANCE.md with date, machine and command."""
from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path


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


def append_result(report: Path, title: str, command: str, lines: list[str], note: str = "") -> None:
    """Add one dated section to `report` (created with a header when missing)."""
    if not report.exists():
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text("# Performance\n\nEvery number here comes from a script in `bench/` (`make bench`); "
                          "each section says when, where and how it was measured.\n")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = [f"\n## {title}\n", f"- Date: {stamp}", f"- Machine: {machine_description()}",
               f"- Command: `{command}`"]
    if note:
        section.append(f"- {note}")
    with report.open("a") as handle:
        handle.write("\n".join(section + [""] + lines) + "\n")
