"""``.mora/stack.env``: where the local stack leaves its endpoints and credentials for later commands.

The file is owner-only (0600) because it holds the S3 secret. ``load_settings`` reads it from
``MORA_HOME`` (not only from ``./.mora``), so every command finds the stack that ``up`` started.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from pathlib import Path

from mora_platform.settings import MoraSettings

STACK_ENV_NAME = "stack.env"


def stack_env_path(home: Path) -> Path:
    """``{home}/stack.env``."""
    return Path(home) / STACK_ENV_NAME


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of a dotenv file (comments and blank lines skipped, quotes stripped)."""
    values: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return values
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def update_env_file(path: Path, updates: Mapping[str, str], remove: Collection[str] = ()) -> None:
    """Set ``updates`` (and drop the keys in ``remove``) in the dotenv file, other keys kept, written
    atomically with mode 0600."""
    values = read_env_file(path)
    values.update(updates)
    for key in remove:
        values.pop(key, None)
    for key, value in values.items():
        if "\n" in value or "\n" in key:
            raise ValueError(f"{path}: value for {key} contains a newline")
    body = "# Written by `mora stack up`; read by every `mora` command (MoraSettings). Keep private.\n"
    body += "".join(f"{key}={value}\n" for key, value in sorted(values.items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(body)
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def load_settings() -> MoraSettings:
    """The settings every command uses: ``MoraSettings`` itself reads ``$MORA_HOME/stack.env`` and ``.env``."""
    return MoraSettings()
