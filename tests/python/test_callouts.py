"""Python callouts: verdicts, filters, and callouts that fail."""
import logging
import socket

import pytest

import wfpr
from conftest import UNUSED_PORT, echo_roundtrip


def test_block_verdict_refuses_the_connect(layer):
    layer.add_callout(lambda req: wfpr.BLOCK, ports=UNUSED_PORT)
    with socket.socket() as s, pytest.raises(wfpr.BlockedError):
        wfpr.connect(s, ("127.0.0.1", UNUSED_PORT))
    assert layer.stats["blocked"] == 1


def test_request_fields(layer, echo):
    seen = []
    layer.add_callout(seen.append, protocol="tcp", ports=echo.port)
    echo_roundtrip(echo.address, b"x")
    (req,) = seen
    assert req.protocol == "tcp" and req.remote == echo.address
    assert req.hop_count == 0 and req.state == wfpr.RedirectState.NOT_REDIRECTED
    assert req.pid > 0


def test_filter_conditions(layer, echo):
    calls = []
    layer.add_callout(lambda r: calls.append("udp"), protocol="udp")
    layer.add_callout(lambda r: calls.append("other-port"), ports=(1, 8))
    layer.add_callout(lambda r: calls.append("10/8"), remote="10.0.0.0/8")
    layer.add_callout(lambda r: calls.append("127/8"), remote="127.0.0.0/8")
    layer.add_callout(lambda r: calls.append("other-pid"), pid=1)
    echo_roundtrip(echo.address, b"x")
    assert calls == ["127/8"]


def test_a_raising_callout_gets_the_default_and_the_layer_survives(layer, echo, caplog):
    def broken(req):
        raise RuntimeError("rule bug")

    layer.add_callout(broken, ports=echo.port, name="broken")
    with caplog.at_level(logging.ERROR, logger="wfpr"):
        for _ in range(3):
            assert echo_roundtrip(echo.address, b"still works") == b"still works"
    assert layer.callout_errors == 3
    assert sum("broken" in r.getMessage() for r in caplog.records) == 1  # logged once


def test_fail_closed_default(layer):
    layer.add_callout(lambda req: 1 / 0, ports=UNUSED_PORT, default=wfpr.BLOCK)
    with socket.socket() as s, pytest.raises(wfpr.BlockedError):
        wfpr.connect(s, ("127.0.0.1", UNUSED_PORT))


def test_a_garbage_verdict_is_an_error_too(layer, echo):
    layer.add_callout(lambda req: "sideways", ports=echo.port)
    assert echo_roundtrip(echo.address, b"ok") == b"ok"
    assert layer.callout_errors == 1


def test_class_callout_and_redirect_to_python_proxy(layer, echo):
    class Rule:
        def __init__(self):
            self.calls = 0

        def classify(self, req):
            self.calls += 1
            return wfpr.PERMIT

    rule = Rule()
    layer.add_callout(rule, ports=echo.port)
    echo_roundtrip(echo.address, b"x")
    assert rule.calls == 1


def test_layer_html_lists_redirectors_and_filters(layer):
    av = layer.redirector("antivirus")
    layer.add_callout(lambda r: None, redirector=av, ports=443, weight=7, name="av-rule")
    html = layer._repr_html_()
    assert "antivirus" in html and "av-rule" in html and "ports=443" in html
    assert av.id.hex() in html


def test_duplicate_redirector_id_is_refused(layer):
    layer.redirector("a", id=b"\x01" * 16)
    with pytest.raises(wfpr.InvalidArgumentError):
        layer.redirector("b", id=b"\x01" * 16)
    with pytest.raises(wfpr.InvalidArgumentError):
        layer.redirector("c", id=b"short")
