"""A throwaway PKI for DICOM TLS tests, made with the ``openssl`` command: a CA, a server certificate for
127.0.0.1/localhost, client certificates with chosen Common Names, and a second ("rogue") CA."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import require_tool


@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path


@dataclass(frozen=True)
class TestPKI:
    ca: Path
    server: Identity
    clients: dict[str, Identity]  # by Common Name
    rogue_ca: Path
    rogue_client: Identity  # signed by rogue_ca, Common Name "modality-a"


def _openssl(*args: str) -> None:
    out = subprocess.run([require_tool("openssl", "openssl"), *args], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {out.stderr[-1000:]}")


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def _leaf(folder: Path, name: str, ca: tuple[Path, Path], usage: str, san: str | None = None) -> Identity:
    key, csr, cert, ext = (folder / f"{name}.{suffix}" for suffix in ("key", "csr", "pem", "ext"))
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    lines = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment", f"extendedKeyUsage={usage}",
             "subjectKeyIdentifier=hash", "authorityKeyIdentifier=keyid,issuer"]
    if san:
        lines.append(f"subjectAltName={san}")
    ext.write_text("\n".join(lines) + "\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial", "-out", str(cert),
             "-days", "2", "-sha256", "-extfile", str(ext))
    return Identity(cert, key)


def make_pki(folder: Path, client_names: tuple[str, ...] = ("modality-a", "modality-b")) -> TestPKI:
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "test-ca")
    rogue = _ca(folder, "rogue-ca")
    server = _leaf(folder, "localhost", ca, "serverAuth,clientAuth", "DNS:localhost,IP:127.0.0.1")
    clients = {name: _leaf(folder, name, ca, "clientAuth") for name in client_names}
    (folder / "rogue").mkdir(exist_ok=True)
    rogue_client = _leaf(folder / "rogue", "modality-a", rogue, "clientAuth")
    return TestPKI(ca[0], server, clients, rogue[0], rogue_client)
