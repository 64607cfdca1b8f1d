"""The IOCTL conformance table (docs/ioctl.md), from Python: exception
classes, winerror and required_size."""
import os
import socket

import pytest

import wfpr
from conftest import UNUSED_PORT

Q = wfpr.SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS
QC = wfpr.SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT


def test_exception_classes_carry_the_winsock_numbers():
    assert issubclass(wfpr.InsufficientBufferError, wfpr.WSAError)
    assert issubclass(wfpr.WSAError, OSError)
    e = wfpr.from_code(10022)
    assert type(e) is wfpr.InvalidArgumentError and e.winerror == 10022 and e.name == "WSAEINVAL"
    assert wfpr.errors.WSAEINVAL is wfpr.InvalidArgumentError
    assert wfpr.from_code(0x80320008 - (1 << 32)).name == "FWP_E_NOT_FOUND"
    assert "WSAENOTCONN (10057)" in str(wfpr.from_code(10057))


def test_size_probe_gives_the_required_size(redirected):
    _, accepted = redirected()
    with pytest.raises(wfpr.InsufficientBufferError) as probe:
        wfpr.ioctl(accepted, Q, 0)
    assert probe.value.winerror == 122
    assert 12 < probe.value.required_size <= wfpr.RECORD_MAX_SIZE
    blob = wfpr.ioctl(accepted, Q, probe.value.required_size)
    assert len(blob) == probe.value.required_size  # exact size, never 0


def test_below_a_ulong_is_invalid(redirected):
    _, accepted = redirected()
    for n in (1, 2, 3):
        with pytest.raises(wfpr.InvalidArgumentError):
            wfpr.ioctl(accepted, Q, n)


def test_too_small_reports_the_size(redirected):
    _, accepted = redirected()
    need = len(wfpr.query_redirect_records(accepted))
    with pytest.raises(wfpr.InsufficientBufferError) as e:
        wfpr.ioctl(accepted, Q, need - 1)
    assert e.value.required_size == need


def test_null_output_with_a_length_is_a_fault_with_the_size(redirected):
    _, accepted = redirected()
    need = len(wfpr.query_redirect_records(accepted))
    with pytest.raises(wfpr.FaultError) as e:
        wfpr.ioctl(accepted, Q, 1024, null_out=True)
    assert e.value.bytes_returned == need


def test_unknown_code(redirected):
    _, accepted = redirected()
    with pytest.raises(wfpr.InvalidArgumentError):
        wfpr.ioctl(accepted, 0x980000FF, 64)


def test_not_a_socket_and_unsupported_protocol():
    r, w = os.pipe()
    try:
        with pytest.raises(wfpr.NotSocketError):
            wfpr.ioctl(r, Q, 64)
    finally:
        os.close(r)
        os.close(w)
    a, b = socket.socketpair()
    with a, b, pytest.raises(wfpr.OperationNotSupportedError):
        wfpr.ioctl(a, Q, 64)


def test_not_connected_and_never_redirected(layer):
    with socket.socket() as s, pytest.raises(wfpr.NotConnectedError):
        wfpr.query_redirect_records(s)
    with socket.create_server(("127.0.0.1", 0)) as srv, socket.socket() as c:
        wfpr.connect(c, srv.getsockname())
        a, _ = srv.accept()
        with a, pytest.raises(wfpr.NotFoundError) as e:
            wfpr.query_redirect_records(a)
        assert e.value.winerror == 0x80320008 - (1 << 32)


def test_no_layer_is_network_down(redirected, layer):
    _, accepted = redirected()
    layer.detach()
    try:
        with pytest.raises(wfpr.NetworkDownError):
            wfpr.query_redirect_records(accepted)
    finally:
        layer.attach()


def test_default_context_names_both_ends(redirected):
    client, accepted = redirected()
    remote, local = wfpr.decode_context(wfpr.query_redirect_context(accepted))
    assert remote == ("127.0.0.1", UNUSED_PORT)
    assert local == client.getsockname()
    assert wfpr.original_destination(accepted) == ("127.0.0.1", UNUSED_PORT)


def test_input_ignored_on_query(redirected):
    _, accepted = redirected()
    assert wfpr.ioctl(accepted, Q, 1024, b"ignored") == wfpr.query_redirect_records(accepted)


def test_set_refuses_bad_blobs_and_set_after_connect(redirected):
    client, accepted = redirected()
    blob = wfpr.query_redirect_records(accepted)
    with socket.socket() as out:
        wfpr.set_redirect_records(out, blob)  # the genuine one is fine
        flipped = bytearray(blob)
        flipped[len(blob) // 2] ^= 0x10
        for bad in (bytes(flipped), blob[:-1], blob + b"\0", b"WFPR" + bytes(60), bytes(wfpr.RECORD_MAX_SIZE + 1)):
            with pytest.raises(wfpr.InvalidArgumentError):
                wfpr.set_redirect_records(out, bad)
    with pytest.raises(wfpr.InvalidArgumentError):
        wfpr.set_redirect_records(client, blob)  # already connected


def test_set_refuses_a_dead_connections_record(redirected):
    client, accepted = redirected()
    blob = wfpr.query_redirect_records(accepted)
    client.close()
    accepted.close()
    with socket.socket() as out, pytest.raises(wfpr.InvalidArgumentError):
        wfpr.set_redirect_records(out, blob)


def test_flush_with_nothing_pending(redirected):
    _, accepted = redirected()
    wfpr.flush(accepted)


def test_query_grows_past_the_first_buffer(layer):
    """A 16-hop record (about 2 KiB) does not fit the first 1 KiB try."""
    from test_records import build_chain
    from conftest import ManualRedirector
    reds = [ManualRedirector(layer, f"g{i}", weight=100 - i) for i in range(wfpr.RECORD_MAX_HOPS)]
    seen, keep = build_chain(layer, reds)
    try:
        assert len(seen[-1].blob) > 1024 and len(seen[-1]) == wfpr.RECORD_MAX_HOPS
    finally:
        for s in keep + [r.listener for r in reds]:
            s.close()
