"""Benchmark results in docs/PERFORMANCE.md, kept current rather than logged: a summary table at the top
with one row per benchmark (latest figure, goal, met or not, machine, date, command) and one section per
benchmark below it. A run replaces its benchmark's section and row; superseded runs live in Git history.
Also the one timing loop of the jitted-function benchmarks."""
from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import re
import time
from pathlib import Path
from typing import Any, Callable

from mvlm_jax.atomic import atomic_file

HEADER = ("# Performance\n\nEvery number here comes from a script in `bench/` (`make bench`). The table is what "
          "holds today: one row per benchmark with its latest figure, and each section below holds that run's "
          "details. A run replaces its own row and section; earlier runs are in the Git history of this file. "
          "Figures from different machines are not comparable.\n")
SUMMARY_START, SUMMARY_END = "<!-- summary: rows written by bench/report.py -->", "<!-- end of summary -->"
SUMMARY_HEAD = ["| benchmark | latest figure | goal | met | machine | date | command |", "|---|---|---|---|---|---|---|"]
LOADED = 1.5  # a 1-min load average above this many times the core count marks a run as load-inflated


@dataclasses.dataclass(frozen=True)
class Headline:
    """A benchmark's row in the summary table: its figure in a few words, the goal it is held to ("" when
    none was set), whether the figure meets it (None: no goal, or not measured), and a caveat such as
    "load-inflated" that belongs beside the verdict."""
    figure: str
    goal: str = ""
    met: bool | None = None
    caveat: str = ""


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


def machine_description(short: bool = False) -> str:
    """The machine in one line; `short`: CPU, cores and any accelerator, for the summary table."""
    import jax

    devices = jax.devices()
    if short:
        accelerator = "" if devices[0].platform == "cpu" else f", {len(devices)}x {devices[0].device_kind}"
        return f"{cpu_model()}, {os.cpu_count()} cores{accelerator}".strip()
    return (f"{platform.machine()} {cpu_model()}, {os.cpu_count()} CPU cores, "
            f"{devices[0].platform} x{len(devices)} ({devices[0].device_kind}), jax {jax.__version__}").replace("  ", " ")


def load_caveat() -> str:
    """'load-inflated (...)' when the 1-min load average exceeds LOADED x the core count: other jobs shared
    the machine, so the figure measures them as much as the code; '' otherwise."""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    return f"load-inflated (1-min load average {load:.1f} on {cores} cores)" if load > LOADED * cores else ""


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


def anchor(title: str) -> str:
    """GitHub's link anchor of a '## title' heading (lower case, punctuation dropped, spaces to hyphens)."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def summary_row(title: str, headline: Headline | None, machine: str, date: str, command: str) -> str:
    if headline is None:  # a caller that gives no headline still gets its row, pointing at the section
        headline = Headline("see the section")
    met = {True: "yes", False: "**no**", None: "-"}[headline.met]
    if headline.caveat:
        met = f"{met}, {headline.caveat}" if headline.met is not None else headline.caveat
    cells = [f"[{title}](#{anchor(title)})", headline.figure, headline.goal or "none set", met, machine, date,
             f"`{command}`"]
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def row_title(row: str) -> str | None:
    match = re.match(r"\| \[(.*?)\]\(#", row)
    return match.group(1) if match else None


def replace_in(items: list[str], key: Callable[[str], str | None], title: str, new: str) -> list[str]:
    """`items` with the first item of this title replaced by `new` and later ones dropped (or `new` appended)."""
    same = [i for i, item in enumerate(items) if key(item) == title]
    if not same:
        return items + [new]
    return [new if i == same[0] else item for i, item in enumerate(items) if i not in same[1:]]


def write_result(report: Path, title: str, command: str, lines: list[str], note: str = "",
                 headline: Headline | None = None) -> None:
    """Make `report` current for one benchmark: its section (title, date, machine, command, goal, `note`,
    then `lines`) replaces the section of the same title, and its row replaces the summary table's row of
    that title; new titles are appended; everything else in the file stays as it was. The file is created
    with a header when missing. A load-inflated run (load_caveat) says so in its row."""
    now = datetime.datetime.now(datetime.timezone.utc)
    caveat = load_caveat()
    if caveat and headline is not None and caveat not in headline.caveat:
        headline = dataclasses.replace(headline, caveat=", ".join(filter(None, [headline.caveat, caveat])))
    section = [f"## {title}\n", f"- Date: {now:%Y-%m-%d %H:%M} UTC", f"- Machine: {machine_description()}",
               f"- Load: 1-min load average {os.getloadavg()[0]:.1f} when written ({os.cpu_count()} cores)",
               f"- Command: `{command}`"]
    if headline is not None and headline.goal:
        section.append(f"- Goal: {headline.goal}")
    if note:
        section.append(f"- {note}")
    new_section = "\n".join(section + [""] + lines)
    row = summary_row(title, headline, machine_description(short=True), f"{now:%Y-%m-%d}", command)

    if not report.exists():
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(HEADER)
    parts = [part.strip("\n") for part in re.split(r"(?m)^(?=## )", report.read_text())]
    head, sections = parts[0], parts[1:]
    if SUMMARY_START in head and SUMMARY_END in head:
        before, rest = head.split(SUMMARY_START, 1)
        table, after = rest.split(SUMMARY_END, 1)
        rows = [line for line in table.strip().splitlines() if row_title(line) is not None]
    else:  # a file from before the summary table: the table goes at the end of its header
        before, rows, after = head + "\n\n", [], ""
    rows = replace_in(rows, row_title, title, row)
    sections = replace_in(sections, lambda text: text.splitlines()[0][3:].strip(), title, new_section)
    head = "\n".join([before.rstrip("\n") + "\n", SUMMARY_START, *SUMMARY_HEAD, *rows, SUMMARY_END]) + after.rstrip("\n")
    with atomic_file(report, force=True) as partial:
        partial.write_text("\n\n".join([head.strip("\n")] + sections) + "\n")


append_result = write_result  # the earlier name, for callers written before the summary table
