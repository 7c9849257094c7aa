"""A secret from a setting, else from a private 0600 file made on first use (one writer wins)."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from pydantic import SecretStr


def setting_or_private_file(setting: SecretStr | None, path: Path) -> bytes:
    if setting is not None:
        return setting.get_secret_value().encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
    return path.read_text().strip().encode()
