"""Record decode round trips over real redirect chains, and random corruption:
a corrupted blob is always refused by SET and never crashes the decoder."""
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wfpr
from conftest import UNUSED_PORT, ManualRedirector


def build_chain(layer, redirectors):
    """Pass one connection through each manual redirector in turn, as their
    proxies would; returns (records seen at each hop, sockets to close)."""
    seen, keep = [], []
    blob = None
    for r in redirectors:
        out = socket.socket()
        if blob is not None:
            wfpr.set_redirect_records(out, blob)
        wfpr.connect(out, ("127.0.0.1", UNUSED_PORT))
        accepted, _ = r.listener.accept()
        keep += [out, accepted]
        blob = wfpr.query_redirect_records(accepted)
        seen.append(wfpr.RedirectRecords.parse(blob))
    return seen, keep


@pytest.fixture
def chain_layer():
    with wfpr.Layer() as layer:
        reds = [ManualRedirector(layer, f"r{i}", weight=100 - i) for i in range(wfpr.RECORD_MAX_HOPS)]
        yield layer, reds
        for r in reds:
            r.listener.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, wfpr.RECORD_MAX_HOPS))
def test_chains_round_trip(chain_layer, n):
    layer, reds = chain_layer
    seen, keep = build_chain(layer, reds[:n])
    try:
        for i, records in enumerate(seen):
            assert len(records) == i + 1
            assert [h.redirector for h in records] == [r.redirector.name for r in reds[: i + 1]]
            assert records.original_destination == ("127.0.0.1", UNUSED_PORT)
            assert all(h.protocol == "tcp" and len(h.token) == 16 for h in records)
            assert records.hops[-1].target == reds[i].address
            assert wfpr.RedirectRecords.parse(records.blob) == records
            assert records.state_for(reds[i].redirector) == wfpr.RedirectState.REDIRECTED_BY_SELF
            if i:
                assert records.state_for(reds[0].redirector) == wfpr.RedirectState.PREVIOUSLY_REDIRECTED_BY_SELF
            if i + 1 < n:
                assert records.state_for(reds[i + 1].redirector) == wfpr.RedirectState.REDIRECTED_BY_OTHER
    finally:
        for s in keep:
            s.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corruption_is_always_refused(chain_layer, data):
    layer, reds = chain_layer
    seen, keep = build_chain(layer, reds[:3])
    blob = seen[-1].blob
    try:
        kind = data.draw(st.sampled_from(["flip", "truncate", "extend", "splice", "random"]))
        if kind == "flip":
            i = data.draw(st.integers(0, len(blob) - 1))
            bit = data.draw(st.integers(0, 7))
            bad = blob[:i] + bytes([blob[i] ^ (1 << bit)]) + blob[i + 1:]
        elif kind == "truncate":
            bad = blob[: data.draw(st.integers(0, len(blob) - 1))]
        elif kind == "extend":
            bad = blob + data.draw(st.binary(min_size=1, max_size=64))
        elif kind == "splice":
            i = data.draw(st.integers(0, len(blob)))
            bad = blob[:i] + data.draw(st.binary(min_size=1, max_size=32)) + blob[i:]
        else:
            bad = data.draw(st.binary(max_size=wfpr.RECORD_MAX_SIZE + 16))
        if bad == blob:
            return
        try:
            wfpr.RedirectRecords.parse(bad)  # may decode (say, a flipped time bit); must not crash
        except wfpr.WSAError:
            pass
        with socket.socket() as out, pytest.raises(wfpr.InvalidArgumentError):
            wfpr.set_redirect_records(out, bad)
    finally:
        for s in keep:
            s.close()


def test_html_table_for_a_chain(chain_layer):
    layer, reds = chain_layer
    seen, keep = build_chain(layer, reds[:2])
    try:
        html = seen[-1]._repr_html_()
        assert html.count("<tr>") == 3 and "r0" in html and "r1" in html
        assert "2 hop(s)" in repr(seen[-1])
        assert "r0 -> r1" in repr(seen[-1])
    finally:
        for s in keep:
            s.close()


def test_decode_refuses_garbage():
    with pytest.raises(wfpr.InvalidArgumentError):
        wfpr.RedirectRecords.parse(b"not a record")


def test_each_hop_names_its_process(chain_layer):
    """The PROCESS attribute: the in-process backend's connections are this
    process's, with its pid, uid, command name and executable."""
    import os
    import sys
    layer, reds = chain_layer
    seen, keep = build_chain(layer, reds[:2])
    try:
        with open("/proc/self/comm") as f:
            comm = f.read().strip()
        for hop in seen[-1]:
            assert hop.process == wfpr.Process(pid=os.getpid(), uid=os.getuid(), name=comm,
                                               exe=os.path.realpath(sys.executable))
    finally:
        for s in keep:
            s.close()
