"""What a command's console output may hold: no library INFO log lines by default, and a user error as one
`error: ...` line without a traceback."""
import re

# absl's log line prefix (orbax, grain and jax log through absl): I1202 07:38:31.640692 140227 file.py:701]
ABSL_INFO = re.compile(r"^I\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]", re.MULTILINE)


def assert_quiet(output: str) -> None:
    lines = ABSL_INFO.findall(output)
    assert not lines, f"library INFO logs on the console: {lines[:3]}"
    assert "Skipping merge of OCDBT" not in output  # orbax's warning at every model save, filtered


def assert_user_error(returncode: int, stderr: str, *names: str) -> None:
    """Exit status != 0, one `error:` message naming each of `names`, no traceback."""
    assert returncode != 0, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-2000:]
    for name in names:
        assert name in errors[0], (name, errors[0])
