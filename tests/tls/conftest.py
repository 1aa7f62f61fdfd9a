from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ferryman.tls.certs import make_cert


class Certs:
    """Development certificates made for one test, under one throwaway CA."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca_dir = root / "ca"
        self.ca = self.ca_dir / "ca.pem"

    def make(self, stem: str, *names: str) -> tuple[Path, Path]:
        cert, key = self.root / f"{stem}.pem", self.root / f"{stem}.key"
        make_cert(list(names), cert, key, self.ca_dir)
        return cert, key


@pytest.fixture
def certs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Certs:
    # Ferryman children inherit the environment: auto-created certificates land here too.
    monkeypatch.setenv("FERRYMAN_CA_DIR", str(tmp_path / "ca"))
    return Certs(tmp_path)


MakeCerts = Callable[..., tuple[Path, Path]]
