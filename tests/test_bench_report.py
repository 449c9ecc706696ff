"""bench/report.py keeps docs/PERFORMANCE.md current: one summary row and one section per benchmark."""
from __future__ import annotations

import pytest

from bench import report
from bench.report import Headline, append_result, write_result

HAND_WRITTEN = ("# Performance\n\nIntro written by hand.\n\n"
                f"{report.SUMMARY_START}\n" + "\n".join(report.SUMMARY_HEAD) + f"\n{report.SUMMARY_END}\n\n"
                "A paragraph under the table, also by hand.\n\n"
                "## Hand notes\n\nNot a benchmark: left alone.\n")


@pytest.fixture(autouse=True)
def quiet_machine(monkeypatch):
    monkeypatch.setattr(report, "machine_description", lambda short=False: "cpu S" if short else "cpu L")
    monkeypatch.setattr(report.os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    monkeypatch.setattr(report.os, "cpu_count", lambda: 2)


def rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| [")]


def test_a_run_replaces_its_row_and_section_and_leaves_the_rest(tmp_path):
    path = tmp_path / "PERFORMANCE.md"
    path.write_text(HAND_WRITTEN)
    write_result(path, "Speed", "python -m bench.speed", ["| a |", "|---|", "| 1.0 |"],
                 headline=Headline("1.0x", ">= 2x", False))
    write_result(path, "Speed", "python -m bench.speed --fast", ["| a |", "|---|", "| 3.0 |"],
                 headline=Headline("3.0x", ">= 2x", True))
    write_result(path, "Memory (peak)", "python -m bench.memory", ["12 GiB"], headline=Headline("12 GiB"))
    text = path.read_text()
    assert text.count("## Speed\n") == 1 and "| 3.0 |" in text and "| 1.0 |" not in text
    assert text.count("## Memory (peak)\n") == 1 and "- Goal: >= 2x" in text
    speed, memory = rows(text)
    assert speed.startswith("| [Speed](#speed) | 3.0x | >= 2x | yes | cpu S | ")
    assert speed.endswith(" | `python -m bench.speed --fast` |")
    assert memory.startswith("| [Memory (peak)](#memory-peak) | 12 GiB | none set | - | cpu S | ")
    # everything that is not a benchmark's row or section is as it was
    assert text.startswith("# Performance\n\nIntro written by hand.\n\n" + report.SUMMARY_START)
    assert f"{report.SUMMARY_END}\n\nA paragraph under the table, also by hand.\n\n## Hand notes\n\n" \
           "Not a benchmark: left alone.\n\n## Speed\n" in text
    assert text.index("## Speed") < text.index("## Memory (peak)")


def test_an_old_log_becomes_one_section_and_a_summary(tmp_path, monkeypatch):
    path = tmp_path / "PERFORMANCE.md"
    path.write_text("# Performance\n\nOld header.\n\n## Speed\n\nold 1\n\n## Other\n\nkept\n\n## Speed\n\nold 2\n")
    monkeypatch.setattr(report.os, "getloadavg", lambda: (7.0, 7.0, 7.0))
    append_result(path, "Speed", "python -m bench.speed", ["new"])  # the earlier call, without a headline
    write_result(path, "Loaded", "python -m bench.loaded", ["x"], headline=Headline("2x", ">= 1x", True))
    text = path.read_text()
    assert text.count("## Speed\n") == 1 and "old 1" not in text and "old 2" not in text and "\nnew\n" in text
    assert "## Other\n\nkept\n" in text and text.startswith("# Performance\n\nOld header.\n\n" + report.SUMMARY_START)
    speed, loaded = rows(text)
    assert "| see the section | none set | - |" in speed
    assert "| yes, load-inflated (1-min load average 7.0 on 2 cores) |" in loaded


def test_a_missing_report_is_created_with_its_header(tmp_path):
    path = tmp_path / "docs" / "PERFORMANCE.md"
    write_result(path, "Speed", "python -m bench.speed", ["x"], headline=Headline("a | b"))
    text = path.read_text()
    assert text.startswith(report.HEADER) and len(rows(text)) == 1 and "| a \\| b |" in text
