"""Where a target's CHAP secrets come from besides argv, which every process listing shows:
the environment (`EARMARK_SERVE_CHAP_SECRET`) or a file only its owner may read.

A secret file others can read is refused, not used with a warning: a warning scrolls by,
and the secret it names has been readable all along.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

#: The environment variable `earmark serve --chap USER` takes the secret from.
SECRET_ENV = "EARMARK_SERVE_CHAP_SECRET"


class SecretFileError(ValueError):
    """A secret file that cannot be used; the message names the file and the fix."""


def read_secret_file(path: Path) -> str:
    """The secret in `path` (its first line), refusing a file its group or others may read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SecretFileError(f"secret file {path} does not exist") from None
    except OSError as exc:
        raise SecretFileError(f"secret file {path} cannot be read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise SecretFileError(f"secret file {path} is not a regular file")
        if mode & 0o077:
            raise SecretFileError(
                f"secret file {path} may be read by others (mode {stat.S_IMODE(mode):03o}): "
                f"make it readable only by its owner with `chmod 600 {path}`")
        lines = f.read().decode().splitlines()
    if not lines or not lines[0]:
        raise SecretFileError(f"secret file {path} is empty: write the secret on its first line")
    return lines[0]


def flag_secret(secret_file: Path | None, environ: Mapping[str, str]) -> str | None:
    """The secret for `--chap USER`: from `--chap-secret-file`, else the environment."""
    if secret_file is not None:
        return read_secret_file(secret_file)
    return environ.get(SECRET_ENV) or None
