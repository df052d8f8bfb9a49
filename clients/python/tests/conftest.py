"""A real node for the suite: `palyra serve` built from this repository, on a fresh data dir in a
temp directory and a free port. The binary is $PALYRA_BIN, else
$CARGO_TARGET_DIR/debug/palyra, else target/debug/palyra (build it with `cargo build`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

import palyra_client

REPO = Path(__file__).resolve().parents[3]


def palyra_bin() -> Path:
    if explicit := os.environ.get("PALYRA_BIN"):
        return Path(explicit)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    if not target.is_absolute():
        target = REPO / target
    return target / "debug" / "palyra"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Node:
    data_dir: Path
    url: str
    log: Path

    def operator(self) -> palyra_client.Client:
        return palyra_client.connect(self.url, data_dir=self.data_dir)


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    binary = palyra_bin()
    if not binary.is_file():
        pytest.fail(f"{binary} not found: run `cargo build` first (or set PALYRA_BIN)")
    root = tmp_path_factory.mktemp("palyra")
    root.chmod(0o700)
    data = root / "node"
    port = free_port()
    log = root / "serve.log"
    env = dict(os.environ, PALYRA_KEY_BACKEND="file")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(binary), "--data-dir", str(data), "serve", "--grpc-addr", f"127.0.0.1:{port}",
             "--console-addr", "127.0.0.1:0"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    node = Node(data, f"https://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"palyra serve exited with {proc.returncode}:\n{log.read_text()}")
            if all((data / "operator" / f).exists() for f in ("ca.pem", "cert.pem", "key.pem")):
                try:
                    with node.operator() as c:
                        c.whoami()
                    break
                except palyra_client.PalyraError:
                    pass
            if time.monotonic() > deadline:
                pytest.fail(f"palyra serve did not come up:\n{log.read_text()}")
            time.sleep(0.1)
        yield node
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
