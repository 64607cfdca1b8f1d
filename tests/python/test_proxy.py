"""Cooperating Python proxies over real loopback TCP: every connection passes
each proxy exactly once, in weight order, and the bytes arrive intact."""
import hashlib
import os

import pytest

import wfpr
from conftest import echo_roundtrip


@pytest.mark.parametrize("n", [1, 2, 3])
def test_chain_of_proxies(layer, echo, n):
    names = ["antivirus", "dlp", "tls-inspect"][:n]
    proxies = [wfpr.Proxy(layer, name, ports=echo.port, weight=10 - i).start() for i, name in enumerate(names)]
    try:
        payloads = [os.urandom(size) for size in (0, 1, 65537, 2_000_000)]
        for p in payloads:
            assert hashlib.sha256(echo_roundtrip(echo.address, p)).digest() == hashlib.sha256(p).digest()
    finally:
        for p in proxies:
            p.stop()
    assert sorted(echo.digests) == sorted(hashlib.sha256(p).hexdigest() for p in payloads)
    for i, proxy in enumerate(proxies):
        assert len(proxy.connections) == len(payloads), proxy.errors  # exactly once each
        assert not proxy.errors
        for conn in proxy.connections:
            assert [h.redirector for h in conn.records] == names[: i + 1]
            assert conn.original_dst == echo.address
    assert layer.stats["redirected"] == n * len(payloads)


def test_inspect_can_rewrite(layer, echo):
    def shout(chunk, direction):
        return chunk.upper() if direction == "up" else chunk

    with wfpr.Proxy(layer, "rewriter", ports=echo.port, inspect=shout):
        assert echo_roundtrip(echo.address, b"hello") == b"HELLO"


def test_inspect_can_drop_and_its_errors_never_stop_the_proxy(layer, echo):
    """None drops a chunk; an exception passes it unchanged and is kept in
    errors; the relay runs in the C engine, whose counters come with stop()."""
    def hook(chunk, direction):
        if direction == "up" and chunk.startswith(b"drop"):
            return None
        if direction == "up" and chunk.startswith(b"raise"):
            raise RuntimeError("a rule bug")
        return chunk

    proxy = wfpr.Proxy(layer, "picky", ports=echo.port, inspect=hook).start()
    try:
        assert echo_roundtrip(echo.address, b"raise, then pass") == b"raise, then pass"
        assert echo_roundtrip(echo.address, b"drop this") == b""
        payload = os.urandom(1 << 20)
        assert echo_roundtrip(echo.address, payload) == payload
    finally:
        proxy.stop()
    assert proxy.errors == ["RuntimeError: a rule bug"]
    assert proxy.stats["accepted"] == 3 and proxy.stats["inspected"] == 3 and proxy.stats["failed"] == 0
    assert [c.bytes_up for c in proxy.connections] == [len(b"raise, then pass"), 0, 1 << 20]
    assert [c.bytes_down for c in proxy.connections] == [len(b"raise, then pass"), 0, 1 << 20]
    assert "picky" in repr(proxy) and "3 connection(s)" in repr(proxy)
