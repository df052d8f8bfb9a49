"""Self-renewing credentials against a real node whose device certificates live 10 s
(`device_certificate_lifetime_seconds = 10`): a client makes calls without pause from two
threads across a full certificate lifetime past its first certificate's expiry and none fails;
its cert.pem is replaced (0600) and works for a new client. A device whose certificate expired
while no client ran renews with its identity key, after a failed attempt (node unreachable)
that keeps the old certificate and is retried."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest

import palyra_client
from palyra_client import PalyraError, RenewalEvent
from palyra_client.renewal import certificate_window

from conftest import Node, Proxy, pair_device, serve

LIFETIME = 10


@pytest.fixture(scope="module")
def short_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with serve(tmp_path_factory.mktemp("short"), f"device_certificate_lifetime_seconds = {LIFETIME}\n") as node:
        yield node


def test_calls_never_fail_across_expiry_and_an_expired_device_renews_with_its_key(
    short_node: Node, tmp_path: Path
) -> None:
    busy, idle = tmp_path / "busy", tmp_path / "idle"
    pair_device(short_node, busy, "python-busy", scopes=("renew/python",))
    pair_device(short_node, idle, "python-idle", scopes=("renew/python",))
    with short_node.operator() as op:
        op.put_secret("renew/python", "TOKEN", b"still here")

    first = (busy / "client" / "cert.pem").read_bytes()
    issued, expires = certificate_window(first)
    assert expires - issued == LIFETIME
    events: list[RenewalEvent] = []
    failures: list[BaseException] = []
    calls = [0, 0]
    until = expires + LIFETIME  # a full lifetime past the first certificate's expiry

    with palyra_client.connect(short_node.url, data_dir=busy, on_renewal=events.append) as me:
        assert me.renews
        assert b"PRIVATE" not in repr(me._renewer.pems).encode(), "a repr never shows the key"

        def call_forever(i: int) -> None:
            while time.time() < until and not failures:
                try:
                    assert me.get_secret("renew/python", "TOKEN") == b"still here"
                    me.whoami()
                    # What new calls present is never expired.
                    assert certificate_window(me.certificate_pem or b"")[1] > time.time()
                except BaseException as e:
                    failures.append(e)
                calls[i] += 1

        threads = [threading.Thread(target=call_forever, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=LIFETIME * 3)
        assert not any(t.is_alive() for t in threads)
        assert not failures, failures
        assert min(calls) > 10, calls
        assert [e.error for e in events if e.error] == []
        assert len([e for e in events if e.not_after]) >= 2, events

    stored = (busy / "client" / "cert.pem").read_bytes()
    assert stored != first
    assert (busy / "client" / "cert.pem").stat().st_mode & 0o777 == 0o600
    assert certificate_window(stored)[1] > time.time() > expires
    with palyra_client.connect(short_node.url, data_dir=busy, renew=False) as again:
        assert again.get_secret("renew/python", "TOKEN") == b"still here"

    # The idle device's certificate expired meanwhile, and the node cannot be reached: the
    # renewal fails, the old certificate stays, and it is retried after a backoff.
    stale = (idle / "client" / "cert.pem").read_bytes()
    assert certificate_window(stale)[1] < time.time()
    events.clear()
    renewed = threading.Event()

    def heard(event: RenewalEvent) -> None:
        events.append(event)
        if event.not_after is not None:
            renewed.set()

    proxy = Proxy(short_node.port)
    proxy.cut()
    try:
        with palyra_client.connect(proxy.url, data_dir=idle, on_renewal=heard) as late:
            with pytest.raises(PalyraError) as down:
                late.get_secret("renew/python", "TOKEN")
            assert down.value.code == grpc.StatusCode.UNAVAILABLE
            assert len(events) == 1 and events[0].error is not None and (events[0].retry_in or 0) > 0, events
            assert (idle / "client" / "cert.pem").read_bytes() == stale

            # Reachable again: the retry renews with the proof, and calls work.
            proxy.resume()
            assert renewed.wait(timeout=30), events
            assert late.get_secret("renew/python", "TOKEN") == b"still here"
    finally:
        proxy.close()
    assert (idle / "client" / "cert.pem").read_bytes() != stale
    assert certificate_window((idle / "client" / "cert.pem").read_bytes())[1] > time.time()
