"""The home folder and its data contracts (ARCHITECTURE.md): store, datasets, models, runs, secrets."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def at(cls, path: str | os.PathLike[str]) -> "Home":
        home = cls(Path(path).expanduser().resolve())
        for d in (home.store_dir, home.datasets_dir, home.models_dir, home.runs_dir, home.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        return home

    @property
    def store_dir(self) -> Path:
        return self.root / "store"

    @property
    def index_path(self) -> Path:
        return self.store_dir / "index.sqlite"

    @property
    def tmp_dir(self) -> Path:
        # Temporary files live on the store's filesystem so that rename() is atomic.
        return self.store_dir / ".tmp"

    @property
    def datasets_dir(self) -> Path:
        return self.root / "datasets"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    def secret(self, name: str, configured: str = "") -> bytes:
        """A named secret: the configured value, else one made once and kept with mode 0600."""
        if configured:
            return configured.encode()
        self.secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.secrets_dir / f"{name}.key"
        try:
            return path.read_bytes().strip()
        except FileNotFoundError:
            pass
        value = secrets.token_hex(32).encode()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            return path.read_bytes().strip()
        try:
            os.write(fd, value)
            os.fsync(fd)
        finally:
            os.close(fd)
        return path.read_bytes().strip()
