"""What the command-line entry points print besides their own output: library logs and flag errors.

Libraries log through Python's logging (orbax, grain and jax through absl's logger): by default only their
warnings and errors reach the console, since a checkpoint save alone logs a dozen INFO lines; `--verbose`
shows their INFO logs too. User errors (data_pipelines.errors) are one line; see there.
"""
from __future__ import annotations

import logging
import sys
from typing import Sequence

from data_pipelines.errors import EXIT_CODE


def define_verbose_flag() -> None:
    """The --verbose flag of an absl entry point (read as absl.flags.FLAGS.verbose); defined once per process."""
    from absl import flags

    if "verbose" not in flags.FLAGS:
        flags.DEFINE_bool("verbose", False, "show the libraries' INFO logs (orbax checkpointing, grain, jax)")


# Warnings that say nothing is wrong: orbax logs this one at every single-process save of a model (it
# looks for per-process OCDBT parts to merge and finds none, as expected when one process wrote them all).
BENIGN_WARNINGS = ("Skipping merge of OCDBT checkpoints",)


def _not_benign(record: logging.LogRecord) -> bool:
    return not any(text in str(record.msg) for text in BENIGN_WARNINGS)


def library_logs(verbose: bool = False) -> None:
    """Library logs at INFO with `verbose`, else at WARNING (warnings and errors still show, except the
    BENIGN_WARNINGS). Under absl's app.run an explicit --verbosity wins."""
    from absl import flags
    from absl import logging as absl_logging

    if flags.FLAGS.is_parsed() and "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present:
        return
    level = logging.INFO if verbose else logging.WARNING
    if not verbose and _not_benign not in logging.getLogger("absl").filters:
        logging.getLogger("absl").addFilter(_not_benign)
    absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)  # absl's own logger
    logging.getLogger().setLevel(level)  # every other library's logger defers to the root's level


def parse_flags(argv: Sequence[str], flag_values=None) -> list[str]:
    """absl flags parser for app.run(main, flags_parser=parse_flags): a bad flag or --config override is
    one line and EXIT_CODE. ml_collections' config flags raise plain exceptions for an unknown override key
    (KeyError / AttributeError, with "Did you mean") or an experiment file that cannot be read (OSError),
    which absl would show with a traceback; an experiment file's own bug keeps its traceback.
    `flag_values`: absl's FlagValues (default: the global FLAGS)."""
    from absl import flags

    flag_values = flags.FLAGS if flag_values is None else flag_values
    try:
        args = flag_values(argv)
        for name in flag_values:  # a config file that failed to load raises its OSError on first access only
            getattr(flag_values[name].value, "lock", None)
        return args
    except flags.Error as error:  # a ValueError in get_config arrives with its traceback as text: keep its last line
        message = str(error)
        if "Traceback (most recent call last)" in message:
            message = f"{message.split(': Error whilst parsing', 1)[0]}: {message.strip().splitlines()[-1]}"
    except (KeyError, AttributeError) as error:  # an override of a key the experiment's config lacks
        texts = []  # ml_collections chains KeyError('key') -> KeyError("'key'\nDid you mean ...") -> AttributeError
        while isinstance(error, (KeyError, AttributeError)):
            texts.append(str(error.args[0] if error.args else error))
            error = error.__context__
        key = texts[-1].partition("\n")[0].strip("'\"")
        hint = next((text.partition("\n")[2] for text in texts if "\n" in text), "")
        overrides = [arg.split("=")[0] for arg in argv if arg.startswith("--config.")]
        flag = next((arg for arg in overrides if f".{key}." in f"{arg}."), "a --config.KEY=VALUE override")
        message = f"{flag}: the experiment's config has no key {key!r}. {hint}".strip()
    except OSError as error:  # the experiment file is missing or unreadable; the last line says why
        message = f"--config: cannot load the experiment file: {str(error).strip().splitlines()[-1].strip()}"
    print(f"error: {message}\nPass --helpshort or --helpfull to see the flags.", file=sys.stderr, flush=True)
    sys.exit(EXIT_CODE)
