"""Input files other than traces (scenarios, policies): one error type and one TOML reader for them."""

from __future__ import annotations

import os
import tomllib


class InputError(ValueError):
    """A scenario, policy or argument is unusable; the message names the file and the field.

    The CLI turns it into one line on stderr and exit code 2.
    """


def read_toml(path: str | os.PathLike, what: str, error: type = InputError) -> dict:
    """Parse a TOML file; raise ``error`` naming the file when it cannot be read or is not TOML."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise error(f"{path}: cannot read {what} file: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from None
