"""palyra_client.pair against a real node: the SPAKE2 handshake in Python, approval through the
API by the operator, then the paired device's own mTLS channel and its scope."""

from __future__ import annotations

import base64
import queue
import threading
from pathlib import Path

import grpc
import pytest

import palyra_client
from palyra_client import PalyraError, Paired, PairingFailed, identity_pb2, pairing_pb2

from conftest import Node


def start_pair(
    **kwargs: object,
) -> tuple[threading.Thread, queue.Queue[object], queue.Queue[tuple[str, str]]]:
    """Runs pair() in a thread; the first queue gets its result (or exception), the second the
    pending request id and fingerprint."""
    result: queue.Queue[object] = queue.Queue()
    pending: queue.Queue[tuple[str, str]] = queue.Queue()

    def run() -> None:
        try:
            paired = palyra_client.pair(
                on_pending=lambda r, f: pending.put((r, f)), poll_interval=0.2, wait_seconds=30, **kwargs  # type: ignore[arg-type]
            )
            result.put(paired)
        except Exception as e:  # handed to the test thread
            result.put(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result, pending


def approve(op: palyra_client.Client, request_id: str, fingerprint: str, scopes: tuple[str, ...] = ()) -> None:
    listed = op.pairing.ListPairingRequests(
        pairing_pb2.ListPairingRequestsRequest(state=pairing_pb2.PAIRING_STATE_PENDING)
    ).requests
    mine = [r for r in listed if r.request_id == request_id]
    assert len(mine) == 1, listed
    assert mine[0].fingerprint == fingerprint
    assert mine[0].device_name == "python-device"
    op.pairing.ApprovePairing(pairing_pb2.ApprovePairingRequest(request_id=request_id, scopes=list(scopes)))


def test_pairing_by_code_and_pin_then_own_scope_only(node: Node, tmp_path: Path) -> None:
    device_dir = tmp_path / "device"
    with node.operator() as op:
        code = op.pairing.CreatePairingCode(pairing_pb2.CreatePairingCodeRequest())
        ca_fingerprint = op.identity.GetNodeIdentity(identity_pb2.GetNodeIdentityRequest()).ca_fingerprint
        thread, result, pending = start_pair(
            server=node.url,
            code=code.code_id,
            pin=code.pin,
            ca_fingerprint=ca_fingerprint,
            name="python-device",
            data_dir=device_dir,
        )
        request_id, fingerprint = pending.get(timeout=30)
        approve(op, request_id, fingerprint)
        thread.join(timeout=30)
        paired = result.get(timeout=1)
        assert isinstance(paired, Paired), paired
        assert paired.fingerprint == fingerprint
        for name in ("identity.key", "key.pem", "ca.pem", "device_id", "cert.pem"):
            assert (device_dir / "client" / name).is_file(), name
        assert (device_dir / "client" / "key.pem").stat().st_mode & 0o077 == 0

        # Another device's scope, written by the operator.
        op.put_secret("devices/01jzzzzzzzzzzzzzzzzzzzzzzz", "OTHER", b"not yours")

    with palyra_client.connect(node.url, data_dir=device_dir) as device:
        me = device.whoami()
        assert me.principal_type == "Device"
        assert me.device_id == paired.device_id
        assert me.role == "device"
        assert me.fingerprint == fingerprint

        own = f"devices/{paired.device_id.lower()}"
        device.put_secret(own, "API_KEY", b"mine", expected_version=0)
        assert device.get_secret(own, "API_KEY") == b"mine"

        with pytest.raises(PalyraError) as denied:
            device.get_secret("devices/01jzzzzzzzzzzzzzzzzzzzzzzz", "OTHER")
        assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert denied.value.reason == "ERROR_REASON_POLICY_DENIED"
        with pytest.raises(PalyraError) as denied:
            device.identity.ListDevices(identity_pb2.ListDevicesRequest())
        assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert denied.value.reason == "ERROR_REASON_POLICY_DENIED"


def test_pairing_by_uri_with_an_extra_scope(node: Node, tmp_path: Path) -> None:
    with node.operator() as op:
        code = op.pairing.CreatePairingCode(pairing_pb2.CreatePairingCodeRequest())
        op.put_secret("connectors/python", "SHARED", b"granted")
        thread, result, pending = start_pair(uri=code.uri, name="python-device", data_dir=tmp_path / "d")
        request_id, fingerprint = pending.get(timeout=30)
        approve(op, request_id, fingerprint, scopes=("connectors/python",))
        thread.join(timeout=30)
        paired = result.get(timeout=1)
        assert isinstance(paired, Paired), paired
    with palyra_client.connect(node.url, data_dir=tmp_path / "d") as device:
        assert device.get_secret("connectors/python", "SHARED") == b"granted"


def test_a_wrong_pin_fails_on_the_device_and_costs_an_attempt(node: Node, tmp_path: Path) -> None:
    with node.operator() as op:
        code = op.pairing.CreatePairingCode(pairing_pb2.CreatePairingCodeRequest())
        wrong = "482913" if code.pin != "482913" else "482914"
        with pytest.raises(PairingFailed, match="wrong PIN"):
            palyra_client.pair(
                uri=code.uri.replace(f"pin={code.pin}", f"pin={wrong}"), name="python-device", data_dir=tmp_path / "w"
            )
        assert not (tmp_path / "w" / "client").exists()


def test_a_node_with_another_ca_is_refused_before_anything_is_sent(node: Node, tmp_path: Path) -> None:
    with node.operator() as op:
        code = op.pairing.CreatePairingCode(pairing_pb2.CreatePairingCodeRequest())
    with pytest.raises(PairingFailed, match="nothing was sent"):
        palyra_client.pair(
            node.url, code=code.code_id, pin=code.pin, ca_fingerprint="0" * 64, name="python-device",
            data_dir=tmp_path / "x",
        )
    with pytest.raises(PairingFailed, match="not confirmed"):
        palyra_client.pair(
            node.url, code=code.code_id, pin=code.pin, name="python-device",
            data_dir=tmp_path / "x", confirm_ca=lambda fp: False,
        )


def test_pairing_with_an_enrollment_key_is_approved_at_once_with_its_scopes(node: Node, tmp_path: Path) -> None:
    with node.operator() as op:
        op.put_secret("agents/python", "TOKEN", b"for-the-fleet")
        created = op.pairing.CreateEnrollmentKey(
            pairing_pb2.CreateEnrollmentKeyRequest(scopes=["agents/python"], max_uses=2)
        )
    token = palyra_client.EnrollmentToken.parse(created.token)
    assert token.key_id == created.key_id
    assert token.secret not in repr(token)
    # No operator step: pair() returns once the node answers.
    paired = palyra_client.pair(enrollment_key=created.token, name="python-agent", data_dir=tmp_path / "a")
    assert (tmp_path / "a" / "client" / "cert.pem").is_file()
    with palyra_client.connect(node.url, data_dir=tmp_path / "a") as device:
        assert device.whoami().device_id == paired.device_id
        assert device.get_secret("agents/python", "TOKEN") == b"for-the-fleet"
    # A token with the secret changed is not this key's: refused by the handshake, nothing stored.
    wrong = palyra_client.EnrollmentToken(token.server, token.key_id, "0" * 32, token.ca_fingerprint)
    inner = "\n".join([wrong.server, wrong.key_id, wrong.secret, wrong.ca_fingerprint]).encode()
    forged = "palyra-enroll:v1:" + base64.urlsafe_b64encode(inner).decode().rstrip("=")
    with pytest.raises(PairingFailed):
        palyra_client.pair(enrollment_key=forged, name="python-agent", data_dir=tmp_path / "b")
    assert not (tmp_path / "b" / "client" / "cert.pem").exists()
    with pytest.raises(ValueError, match="palyra-enroll:v1:"):
        palyra_client.pair(enrollment_key="not-a-token", name="python-agent", data_dir=tmp_path / "c")


def test_enrollment_tokens_are_checked_as_the_node_checks_them() -> None:
    secret = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    fp = "ab" * 32

    def enc(inner: str) -> str:
        return "palyra-enroll:v1:" + base64.urlsafe_b64encode(inner.encode()).decode().rstrip("=")

    good = palyra_client.EnrollmentToken.parse(enc(f"node.lan:7443\nabcdefghlo\n{secret}\n{fp}"))
    assert (good.server, good.key_id, good.ca_fingerprint) == ("node.lan:7443", "ABCDEFGH10", fp)
    assert secret not in repr(good)
    assert palyra_client.EnrollmentToken.parse(enc(f"[::1]:7443\nABCDEFGH12\n{secret}\n{fp}")).server == "[::1]:7443"
    for bad, why in [
        ("palyra://pair?x", "starts with"),
        ("palyra-enroll:v1:!!!", "base64"),
        (enc(f"h:1\nABCDEFGH12\n{secret}\n{fp}") + "==", "base64"),
        (enc("a\nb"), "fields"),
        (enc(f"h\nABCDEFGH12\n{secret}\n{fp}"), "HOST:PORT"),
        (enc(f"evil.example:443/../x?y\nABCDEFGH12\n{secret}\n{fp}"), "HOST:PORT"),
        (enc(f"h:0\nABCDEFGH12\n{secret}\n{fp}"), "HOST:PORT"),
        (enc(f"h:1\nABC\n{secret}\n{fp}"), "key id"),
        (enc(f"h:1\nnot-a-ulid\n{secret}\n{fp}"), "key id"),
        (enc(f"h:1\nABCDEFGH12\nshort\n{fp}"), "secret"),
        (enc(f"h:1\nABCDEFGH12\n{secret.lower()}\n{fp}"), "secret"),
        (enc(f"h:1\nABCDEFGH12\n{secret}\nAB"), "fingerprint"),
        ("x" * 1025, "longer"),
    ]:
        with pytest.raises(ValueError, match=why) as raised:
            palyra_client.EnrollmentToken.parse(bad)
        assert secret not in str(raised.value)
