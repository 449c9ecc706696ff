"""Appending benchmark results to docs/PERFORMANCE.md with date, machine and command."""
from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path


def machine_description() -> str:
    import jax

    devices = jax.devices()
    return (f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPU cores, "
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
