"""Client.watch_secrets against a real node: a put is seen, a stream cut by the network resumes
after the last sequence (nothing missed, nothing repeated), a scope the device was not granted
raises PERMISSION_DENIED, a revoked watcher gets UNAUTHENTICATED / DEVICE_REVOKED (no
reconnecting)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import AsyncIterator

import grpc
import pytest

import palyra_client
from palyra_client import PalyraError, identity_pb2, vault_pb2

from conftest import Node, Proxy, pair_device

PUT, DELETE, PROGRESS = vault_pb2.SECRET_CHANGE_PUT, vault_pb2.SECRET_CHANGE_DELETE, vault_pb2.SECRET_CHANGE_PROGRESS
STEP = 10.0  # seconds any one awaited change may take


@pytest.fixture(scope="module")
def device(node: Node, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("watcher")
    pair_device(node, data, "python-watcher", scopes=("watch/python",))
    return data


async def live(changes: AsyncIterator[vault_pb2.WatchSecretsResponse]) -> None:
    """Waits until the watch is live: its first message is the progress marker saying where the
    stream starts."""
    first = await asyncio.wait_for(anext(changes), STEP)
    assert first.change == PROGRESS and first.scope == "" and first.key == "", first


async def next_real(changes: AsyncIterator[vault_pb2.WatchSecretsResponse]) -> vault_pb2.WatchSecretsResponse:
    """The next change that is not a progress marker."""
    while True:
        change = await asyncio.wait_for(anext(changes), STEP)
        if change.change != PROGRESS:
            return change


def test_a_put_is_seen_with_its_metadata(node: Node, device: Path) -> None:
    async def run() -> None:
        with node.operator() as op, palyra_client.connect(node.url, data_dir=device) as me:
            changes = me.watch_secrets("watch/python", recursive=True, progress=True)
            try:
                await live(changes)
                put = await asyncio.to_thread(op.put_secret, "watch/python/sub", "API_KEY", b"value-never-sent")
                change = await next_real(changes)
                assert (change.scope, change.key, change.version, change.change) == (
                    "watch/python/sub", "API_KEY", put.version, PUT
                )
                assert change.sequence > 0
                assert b"value-never-sent" not in change.SerializeToString()
            finally:
                await changes.aclose()

    asyncio.run(run())


def test_a_cut_stream_resumes_after_the_last_sequence(node: Node, device: Path) -> None:
    proxy = Proxy(node.port)

    async def run() -> None:
        with node.operator() as op, palyra_client.connect(proxy.url, data_dir=device) as me:
            changes = me.watch_secrets("watch/python/resume", progress=True, backoff_initial=0.05, backoff_max=0.2)
            try:
                await live(changes)
                # Cut before any change was seen: the resume point is where the stream started.
                proxy.cut()
                accepted = proxy.accepted
                await asyncio.to_thread(op.put_secret, "watch/python/resume", "A", b"1")
                proxy.resume()
                seen = [await next_real(changes)]
                assert (seen[-1].key, seen[-1].change) == ("A", PUT)
                assert proxy.accepted > accepted, "the watch reconnected"

                # The network drops every connection, and refuses new ones while these happen.
                proxy.cut()
                accepted = proxy.accepted
                await asyncio.to_thread(op.put_secret, "watch/python/resume", "B", b"2")
                await asyncio.to_thread(op.put_secret, "watch/python/resume", "C", b"3")
                await asyncio.to_thread(op.delete_secret, "watch/python/resume", "A")
                proxy.resume()

                for _ in range(3):
                    seen.append(await next_real(changes))
                assert proxy.accepted > accepted, "the watch reconnected"
                assert [(c.key, c.change) for c in seen] == [("A", PUT), ("B", PUT), ("C", PUT), ("A", DELETE)]
                sequences = [c.sequence for c in seen]
                assert sequences == sorted(set(sequences)), f"no repeat, in order: {sequences}"

                # Nothing more: no repeat of what was already seen after the reconnect.
                await asyncio.to_thread(op.put_secret, "watch/python/resume", "D", b"4")
                last = await next_real(changes)
                assert (last.key, last.change) == ("D", PUT) and last.sequence > sequences[-1]
            finally:
                await changes.aclose()

    try:
        asyncio.run(run())
    finally:
        proxy.close()


def test_a_scope_not_granted_raises_permission_denied(node: Node, device: Path) -> None:
    async def run() -> None:
        with palyra_client.connect(node.url, data_dir=device) as me:
            changes = me.watch_secrets("apps/not-yours")
            with pytest.raises(PalyraError) as denied:
                await asyncio.wait_for(anext(changes), STEP)
            assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
            assert denied.value.reason == "ERROR_REASON_POLICY_DENIED"

    asyncio.run(run())


def test_revoking_the_watcher_ends_the_watch_with_device_revoked(node: Node, tmp_path: Path) -> None:
    paired = pair_device(node, tmp_path / "revoked", "python-revoked")
    own = f"devices/{paired.device_id.lower()}"

    async def run() -> None:
        with node.operator() as op, palyra_client.connect(node.url, data_dir=tmp_path / "revoked") as me:
            changes = me.watch_secrets(own, progress=True)
            await live(changes)
            await asyncio.to_thread(
                op.identity.RevokeDevice, identity_pb2.RevokeDeviceRequest(device_id=paired.device_id, reason="lost")
            )
            # Not a reconnect loop: the revocation is the client's typed error.
            with pytest.raises(PalyraError) as revoked:
                await next_real(changes)
            assert revoked.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert revoked.value.reason == "ERROR_REASON_DEVICE_REVOKED"

    asyncio.run(run())
