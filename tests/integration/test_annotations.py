"""Hop annotations, with real curl through two proxies on each backend: the
antivirus proxy says `av=inline` with conn:annotate, the DLP proxy after it
reads that as the antivirus hop's annotation and refuses connections that
did not come through it. The log shows both sides; the record's token
covers the annotation, so no process can forge or alter one."""
import subprocess

import pytest

from itsupport import PASS_RULE, PY, WFPR, sha256_file
from test_udp import CLIENT as UDP_CLIENT, udp_echo  # noqa: F401 - fixture

AV = """
function on_connect(conn)
  assert(conn:annotate("av", "inline"))
  assert(conn:annotate("av.engine", "eicar-1"))
  local ok, why = conn:annotate("bad key", "x")
  assert(ok == nil and why:find("a key is"), why)
  return inspect
end
function on_data(conn, direction, chunk)
  -- too late here: the connection was passed on when on_connect returned
  local ok, why = conn:annotate("late", "x")
  assert(ok == nil and why:find("on_connect only"), why)
  return pass
end
"""

DLP = """
function on_connect(conn)
  local before = conn.hops[#conn.hops - 1]
  if not before or before.annotations.av ~= "inline" then
    return block, "not scanned by the antivirus"
  end
  return pass
end
"""


@pytest.fixture(params=["preload", "ebpf"])
def backend(request, rules):
    if request.param == "ebpf":
        probe = subprocess.run([WFPR, "run", "--backend", "ebpf", "--rules", rules("probe", PASS_RULE), "--", "true"],
                               capture_output=True, text=True, timeout=60)
        if probe.returncode != 0:
            pytest.skip("the eBPF backend is not available here: " + " ".join(probe.stderr.split()))
    return request.param


def test_dlp_trusts_the_antivirus_annotation(backend, http_server, rules, wfpr_run, tmp_path):
    out = tmp_path / "got.bin"
    run = wfpr_run([("av", rules("av", AV)), ("dlp", rules("dlp", DLP))],
                   ["curl", "-sS", "--fail", "-o", str(out), http_server["v4"] + "/small.bin"],
                   extra=["--backend", backend])
    assert run.returncode == 0, run.stderr
    assert sha256_file(out) == sha256_file(http_server["root"] / "small.bin")
    av = [e for e in run.events("connect") if e["proxy"] == "av"]
    dlp = [e for e in run.events("connect") if e["proxy"] == "dlp"]
    assert len(av) == 1 and len(dlp) == 1, run.log
    assert av[0]["annotated"] == {"av": "inline", "av.engine": "eicar-1"}
    assert av[0]["annotations"] == [{}]
    assert dlp[0]["hops"] == ["av", "dlp"] and dlp[0]["verdict"] == "pass"
    assert dlp[0]["annotations"] == [{"av": "inline", "av.engine": "eicar-1"}, {}]
    assert run.summary()["av"]["rule_errors"] == 0  # the asserts in the rule held


def test_a_udp_flow_carries_the_annotation(backend, udp_echo, rules, wfpr_run):
    """UDP: the antivirus's annotation goes with the flow's first datagram."""
    host, port = udp_echo
    av = 'function on_connect(conn) assert(conn:annotate("av", "inline")) return pass end\n'
    run = wfpr_run([("av", rules("av", av)), ("dlp", rules("dlp", DLP))], [PY, "-c", UDP_CLIENT, host, str(port)],
                   extra=["--backend", backend])
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["%s:%d" % (host, port)] * 5
    dlp = [e for e in run.events("connect", "udp") if e["proxy"] == "dlp"]
    assert [(e["verdict"], e["annotations"]) for e in dlp] == [("pass", [{"av": "inline"}, {}])]
    assert [e["annotated"] for e in run.events("connect", "udp") if e["proxy"] == "av"] == [{"av": "inline"}]


def test_dlp_blocks_without_the_annotation(backend, http_server, rules, wfpr_run):
    """The same chain with an antivirus that says nothing: the DLP proxy
    blocks, and its log says why."""
    run = wfpr_run([("av", rules("av", PASS_RULE)), ("dlp", rules("dlp", DLP))],
                   ["curl", "-sS", "--fail", "-o", "/dev/null", http_server["v4"] + "/small.bin"],
                   extra=["--backend", backend])
    assert run.returncode != 0
    dlp = [e for e in run.events("connect") if e["proxy"] == "dlp"]
    assert [(e["verdict"], e["reason"], e["annotations"]) for e in dlp] == [
        ("block", "not scanned by the antivirus", [{}, {}])]


def test_a_client_cannot_annotate_its_own_connection(backend, http_server, rules, wfpr_run, tmp_path):
    """A program that is not a proxy has no records to SET, so it cannot
    annotate: the library refuses, and on eBPF so does the kernel, even when
    the program calls setsockopt itself."""
    client = tmp_path / "client.py"
    client.write_text(CLIENT)
    run = wfpr_run([("dlp", rules("dlp", DLP))], [PY, str(client), http_server["v4"][len("http://"):]],
                   extra=["--backend", backend])
    assert "refused: 10022" in run.stdout, (run.stdout, run.stderr)
    assert "kernel took it" not in run.stdout
    dlp = [e for e in run.events("connect") if e["proxy"] == "dlp"]
    assert [(e["verdict"], e["annotations"]) for e in dlp] == [("block", [{}])]


CLIENT = r"""
import socket, sys
import wfpr
host, port = sys.argv[1].rsplit(":", 1)
s = socket.socket()
try:
    wfpr.annotate(s, "av", "inline")
    print("annotated")
except wfpr.WSAError as e:
    print("refused: %d" % e.winerror)
# what a program that skips the library would try (the eBPF layer's option)
try:
    s.setsockopt(0x57465052, 4, b"\x02av\x06inline")
    print("kernel took it")
except OSError as e:
    print("kernel refused: %s" % e.strerror)
s.connect((host, int(port)))
s.sendall(b"GET /small.bin HTTP/1.0\r\n\r\n")
print(len(s.recv(100)))
"""
