"""A real node for the suite: `palyra serve` built from this repository, on a fresh data dir in a
temp directory and a free port. The binary is $PALYRA_BIN, else
$CARGO_TARGET_DIR/debug/palyra, else target/debug/palyra (build it with `cargo build`)."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import threading
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

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@contextlib.contextmanager
def serve(root: Path, config: str | None = None) -> Iterator[Node]:
    """`palyra serve` on a fresh data dir in `root` (with `config` as its palyra.toml), until the
    block ends."""
    binary = palyra_bin()
    if not binary.is_file():
        pytest.fail(f"{binary} not found: run `cargo build` first (or set PALYRA_BIN)")
    root.chmod(0o700)
    data = root / "node"
    if config is not None:
        data.mkdir(mode=0o700)
        (data / "palyra.toml").write_text(config)
    port = free_port()
    log = root / "serve.log"
    env = dict(os.environ, PALYRA_KEY_BACKEND="file")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(binary), "--data-dir", str(data), "serve", "--grpc-addr", f"127.0.0.1:{port}",
             "--console-addr", "127.0.0.1:0", "--quic-addr", "127.0.0.1:0"],
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


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with serve(tmp_path_factory.mktemp("palyra")) as node:
        yield node


def pair_device(node: Node, data_dir: Path, name: str, scopes: tuple[str, ...] = ()) -> palyra_client.Paired:
    """Pairs `data_dir` with `node` by URI (palyra_client.pair in a thread), approved with
    `scopes` by the operator."""
    result: queue.Queue[object] = queue.Queue()
    pending: queue.Queue[str] = queue.Queue()
    with node.operator() as op:
        code = op.pairing.CreatePairingCode(palyra_client.pairing_pb2.CreatePairingCodeRequest())

        def run() -> None:
            try:
                result.put(palyra_client.pair(
                    uri=code.uri, name=name, data_dir=data_dir, poll_interval=0.1, wait_seconds=30,
                    on_pending=lambda request_id, _: pending.put(request_id),
                ))
            except Exception as e:  # handed to the test thread
                result.put(e)

        threading.Thread(target=run, daemon=True).start()
        request_id = pending.get(timeout=30)
        op.pairing.ApprovePairing(
            palyra_client.pairing_pb2.ApprovePairingRequest(request_id=request_id, scopes=list(scopes))
        )
    paired = result.get(timeout=30)
    assert isinstance(paired, palyra_client.Paired), paired
    return paired


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of a node, whose connections a test can cut: `cut()`
    closes every connection and refuses new ones until `resume()`."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._paused = False
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._paused:
                    client.close()
                    continue
                self.accepted += 1
                try:
                    upstream = socket.create_connection(("127.0.0.1", self._upstream), timeout=5)
                except OSError:
                    client.close()
                    continue
                upstream.settimeout(None)
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        with self._lock:
            self._paused = True
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def resume(self) -> None:
        with self._lock:
            self._paused = False

    def close(self) -> None:
        self._listener.close()
        self.cut()
