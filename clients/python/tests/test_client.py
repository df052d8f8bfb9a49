"""palyra_client against a real node: the operator's mTLS channel, the vault, typed errors."""

from __future__ import annotations

import grpc
import pytest

import palyra_client
from palyra_client import ErrorReason, PalyraError, identity_pb2, vault_pb2

from conftest import Node


def test_whoami_as_operator(node: Node) -> None:
    with node.operator() as c:
        me = c.whoami()
    assert me.principal_type == "Device"
    assert me.role == "admin"
    assert len(me.device_id) == 26
    assert len(me.fingerprint) == 64


def test_connect_with_explicit_pems(node: Node) -> None:
    creds = node.data_dir / "operator"
    with palyra_client.connect(
        node.url, (creds / "ca.pem").read_bytes(), creds / "cert.pem", str(creds / "key.pem")
    ) as c:
        assert c.whoami().role == "admin"


def test_vault_put_get_versions_and_cas_conflict(node: Node) -> None:
    with node.operator() as c:
        first = c.put_secret("apps/python", "TOKEN", b"one", expected_version=0)
        assert first.version == 1
        second = c.put_secret("apps/python", "TOKEN", "two", expected_version=1)
        assert second.version == 2
        assert c.get_secret("apps/python", "TOKEN") == b"two"
        assert c.get_secret("apps/python", "TOKEN", version=1) == b"one"
        assert [v.version for v in c.secret_versions("apps/python", "TOKEN")] == [1, 2]
        assert [m.key for m in c.list_secrets("apps", recursive=True)] == ["TOKEN"]

        with pytest.raises(PalyraError) as conflict:
            c.put_secret("apps/python", "TOKEN", b"three", expected_version=1)
        assert conflict.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert conflict.value.reason == "ERROR_REASON_VERSION_CONFLICT"
        assert conflict.value.reason_value == ErrorReason.ERROR_REASON_VERSION_CONFLICT
        assert conflict.value.domain == palyra_client.ERROR_DOMAIN
        # The conflict changed nothing.
        assert c.get_secret("apps/python", "TOKEN") == b"two"

        with pytest.raises(PalyraError) as missing:
            c.get_secret("apps/python", "NOPE")
        assert missing.value.code == grpc.StatusCode.NOT_FOUND
        assert missing.value.reason == "ERROR_REASON_NOT_FOUND"

        # The generated stubs are there too, behind the same error mapping.
        with pytest.raises(PalyraError) as invalid:
            c.vault.GetSecret(vault_pb2.GetSecretRequest(scope="Bad Scope", key="K"))
        assert invalid.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert invalid.value.reason == "ERROR_REASON_INVALID_ARGUMENT"


def test_anonymous_call_is_denied_with_code_and_reason(node: Node) -> None:
    # TLS that trusts the node's CA but presents no client certificate: Palyra::Anonymous.
    ca = (node.data_dir / "operator" / "ca.pem").read_bytes()
    channel = grpc.secure_channel(node.url.removeprefix("https://"), grpc.ssl_channel_credentials(ca))
    with palyra_client.Client(channel) as anonymous:
        assert anonymous.whoami().principal_type == "Anonymous"
        # Refused by policy; for an anonymous caller that is UNAUTHENTICATED.
        with pytest.raises(PalyraError) as denied:
            anonymous.identity.ListDevices(identity_pb2.ListDevicesRequest())
        assert denied.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert denied.value.reason == "ERROR_REASON_POLICY_DENIED"
        with pytest.raises(PalyraError) as denied:
            anonymous.get_secret("apps/python", "TOKEN")
        assert denied.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert denied.value.reason == "ERROR_REASON_POLICY_DENIED"


def test_unreachable_node_is_a_palyra_error_without_reason(node: Node) -> None:
    from conftest import free_port

    with palyra_client.connect(f"https://127.0.0.1:{free_port()}", data_dir=node.data_dir) as c:
        with pytest.raises(PalyraError) as down:
            c.whoami()
    assert down.value.code == grpc.StatusCode.UNAVAILABLE
    assert down.value.reason == ""
