"""Unmodified transparent proxies in a wfpr chain (docs/unmodified-proxies.md):
haproxy (`server s 0.0.0.0:0`: it connects to the SO_ORIGINAL_DST
destination) and mitmproxy (`mitmdump --mode transparent`), between
`wfpr proxy` rules. On the eBPF backend they run in a `wfpr daemon`'s cgroup
of the test's own and are registered with `wfpr redirector add`; on the
preload backend `wfpr redirector run` starts them under the shim. Real curl
(and, on eBPF, a statically linked client); bytes hashed at both ends; each
proxy once, in order, no loop."""
import errno
import http.server
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time

import pytest

from itsupport import PASS_RULE, PY, ROOT, SHIM, WFPR, Quiet, sha256_file
from test_daemon import STATIC_FETCH, Layer, ebpf_ok  # noqa: F401 - fixture

MITMDUMP = os.environ.get("WFPR_MITMDUMP", os.path.join(ROOT, ".venv-mitmproxy", "bin", "mitmdump"))
SO_ORIGINAL_DST = 80
HAPROXY_CFG = """global
  maxconn 200
defaults
  mode tcp
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend f
  bind 127.0.0.1:{port}
  default_backend b
backend b
  server s {server}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, timeout=60):
    """Until something listens on 127.0.0.1:port (read from /proc: a probe
    connection would itself go through the proxy)."""
    want = ":%04X" % port
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open("/proc/net/tcp") as f:
            if any(line.split()[1].endswith(want) and line.split()[3] == "0A" for line in f.readlines()[1:]):
                return
        assert proc.poll() is None, "exited before it listened"
        time.sleep(0.05)
    raise AssertionError("nothing listens on port %d" % port)


def in_cgroup(layer, args, **kwargs):
    """Start args in the layer's cgroup (exec: the pid is the program's)."""
    return layer.started(["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', layer.cgroup, *args], **kwargs)


class EbpfLayer(Layer):
    backend = "ebpf"
    static_client = True

    def unmodified(self, name, port, argv, *options, **popen):
        """Start an unmodified proxy in the cgroup, then `wfpr redirector add` it."""
        proc = in_cgroup(self, argv, **popen)
        wait_listening(port, proc)
        r = subprocess.run([WFPR, "redirector", "add", "--control", self.control, "--name", name, "--listen",
                            "127.0.0.1:%d" % port, "--pid", str(proc.pid), *options], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stderr
        assert "redirector %s" % name in r.stdout
        return proc

    def client(self, args):
        return self.run(args)


class PreloadLayer:
    """A broker and `wfpr proxy --broker` proxies; unmodified proxies under
    `wfpr redirector run`; clients under the shim."""
    backend = "preload"
    static_client = False  # the shim cannot catch a static program

    def __init__(self, tmp_path, started):
        self.tmp, self.started, self.proxies = tmp_path, started, {}
        self.broker = str(tmp_path / "broker.sock")
        self.log = str(tmp_path / "log.jsonl")
        started([WFPR, "broker", "--socket", self.broker], stderr=open(tmp_path / "broker.err", "w"))
        for _ in range(200):
            if os.path.exists(self.broker + ".key"):
                break
            time.sleep(0.02)

    def proxy(self, name, *options, rules=PASS_RULE):
        path = self.tmp / (name + ".lua")
        path.write_text(rules)
        proc = self.started([WFPR, "proxy", "--broker", self.broker, "--name", name, "--rules", str(path), "--log",
                             self.log, *options], ready=True, stderr=open(self.tmp / (name + ".err"), "a+"))
        self.proxies[name] = proc
        return proc

    def unmodified(self, name, port, argv, *options, **popen):
        """Start an unmodified proxy with `wfpr redirector run`; wait until the shim registered it."""
        if popen.get("stderr") is subprocess.STDOUT:
            said = popen["stdout"].name
        else:
            said = self.tmp / (name + ".err")
            popen["stderr"] = open(said, "w")
        proc = self.started([WFPR, "redirector", "run", "--broker", self.broker, "--name", name, "--listen",
                             "127.0.0.1:%d" % port, *options, "--", *argv], **popen)
        deadline = time.time() + 60
        while "registered with the broker" not in open(said).read():
            assert proc.poll() is None and time.time() < deadline, open(said).read()
            time.sleep(0.05)
        return proc

    def client(self, args):
        return subprocess.run(args, env=dict(os.environ, LD_PRELOAD=SHIM, WFPR_BROKER=self.broker),
                              capture_output=True, text=True, timeout=120)

    run = client

    def events(self, event="connect"):
        return Layer.events(self, event)

    def close(self):
        self.started.cleanup()


@pytest.fixture(params=["ebpf", "preload"])
def layer(request, tmp_path, started):
    if not shutil.which("haproxy"):
        pytest.skip("haproxy is not installed (make test installs it)")
    if request.param == "ebpf":
        request.getfixturevalue("ebpf_ok")
        lay = EbpfLayer(tmp_path, started)
    else:
        lay = PreloadLayer(tmp_path, started)
    yield lay
    lay.close()


def haproxy(layer, name, *options, server="0.0.0.0:0"):
    port = free_port()
    cfg = layer.tmp / (name + ".cfg")
    cfg.write_text(HAPROXY_CFG.format(port=port, server=server))
    return layer.unmodified(name, port, ["haproxy", "-db", "-f", str(cfg)], *options,
                            stderr=open(layer.tmp / (name + ".err"), "w")), port


def mitmdump(layer, name, *options):
    if not os.path.exists(MITMDUMP):
        pytest.skip("mitmproxy is not installed in %s (make test installs it)" % MITMDUMP)
    port = free_port()
    out = open(layer.tmp / (name + ".out"), "w+")
    proc = layer.unmodified(name, port, [MITMDUMP, "--mode", "transparent", "--listen-host", "127.0.0.1",
                                         "--listen-port", str(port), "--set", "flow_detail=1", "--set",
                                         "confdir=" + str(layer.tmp / "mitm")], *options,
                            stdout=out, stderr=subprocess.STDOUT)
    return proc, port, out


def counter(name):
    status = subprocess.run([WFPR, "ebpf", "status"], capture_output=True, text=True).stdout
    return sum(int(n) for n in re.findall(name + r" (\d+)", status))


def fetch_both(layer, http_server, tmp_path):
    """curl and the static client fetch small.bin; both arrive whole."""
    port = int(http_server["v4"].rsplit(":", 1)[1])
    want = sha256_file(http_server["root"] / "small.bin")
    got = layer.client(["curl", "-sS", "--fail", "-o", str(tmp_path / "curl.bin"), http_server["v4"] + "/small.bin"])
    assert got.returncode == 0, got.stderr
    assert sha256_file(tmp_path / "curl.bin") == want
    clients = 1
    if layer.static_client and os.path.exists(STATIC_FETCH):
        got = layer.run(["sh", "-c", '"$0" 127.0.0.1 "$1" /small.bin > "$2"', STATIC_FETCH, str(port),
                         str(tmp_path / "static.bin")])
        assert got.returncode == 0, got.stderr
        assert sha256_file(tmp_path / "static.bin") == want
        clients = 2
    time.sleep(0.3)
    return clients


def hops_seen(layer, proxy):
    return [tuple(e["hops"]) for e in layer.events() if e["proxy"] == proxy]


def test_haproxy_between_two_wfpr_proxies(layer, http_server, tmp_path):
    dport = http_server["v4"].rsplit(":", 1)[1]
    layer.proxy("first", "--weight", "300", "--dport", dport)
    haproxy(layer, "haproxy", "--weight", "200", "--dport", dport)
    layer.proxy("last", "--weight", "100", "--dport", dport)
    carried, answered = counter("records carried"), counter("SO_ORIGINAL_DST answered")
    clients = fetch_both(layer, http_server, tmp_path)
    assert hops_seen(layer, "first") == [("first",)] * clients
    assert hops_seen(layer, "last") == [("first", "haproxy", "last")] * clients  # each once, in order
    if layer.backend == "ebpf":
        assert counter("records carried") - carried == clients
        assert counter("SO_ORIGINAL_DST answered") - answered == clients
        assert "unmodified proxy haproxy" in layer.daemon_said()


def test_mitmdump_between_two_wfpr_proxies(layer, http_server, tmp_path):
    dport = http_server["v4"].rsplit(":", 1)[1]
    layer.proxy("first", "--weight", "300", "--dport", dport)
    mitm, port, out = mitmdump(layer, "mitm", "--weight", "200", "--dport", dport)
    layer.proxy("last", "--weight", "100", "--dport", dport)
    clients = fetch_both(layer, http_server, tmp_path)
    assert hops_seen(layer, "last") == [("first", "mitm", "last")] * clients
    out.seek(0)
    said = out.read()
    assert said.count("GET http://127.0.0.1:%s/small.bin" % dport) == clients, said  # it saw each request


def test_haproxy_then_mitmdump_back_to_back(layer, http_server, tmp_path):
    dport = http_server["v4"].rsplit(":", 1)[1]
    haproxy(layer, "haproxy", "--weight", "300", "--dport", dport)
    mitm, mitm_port, out = mitmdump(layer, "mitm", "--weight", "200", "--dport", dport)
    layer.proxy("last", "--weight", "100", "--dport", dport)
    clients = fetch_both(layer, http_server, tmp_path)
    assert hops_seen(layer, "last") == [("haproxy", "mitm", "last")] * clients  # no loop, each once
    out.seek(0)
    assert out.read().count("/small.bin") == clients


def original_dst_errno(sock):
    try:
        sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        return 0
    except OSError as e:
        return e.errno


def test_what_is_not_carried_or_answered(layer, http_server, tmp_path, www):
    """An unregistered process gets what Linux gives for SO_ORIGINAL_DST; a
    registered proxy that connects elsewhere than the original destination
    carries no record: the next proxy sees a new connection from haproxy."""
    # Linux's own answer, outside the layer
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        c = socket.create_connection(listener.getsockname())
        a, _ = listener.accept()
        linux = original_dst_errno(a)
        a.close()
        c.close()
    assert linux in (errno.ENOENT, errno.ENOPROTOOPT)
    probe = "import errno, socket\n" \
            "l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(1)\n" \
            "c = socket.create_connection(l.getsockname()); a, _ = l.accept()\n" \
            "try:\n    a.getsockopt(socket.SOL_IP, 80, 16); print(0)\n" \
            "except OSError as e:\n    print(e.errno)\n"
    layer.proxy("any")  # it takes every connection, the probe's too
    got = layer.client([PY, "-c", probe])
    assert got.returncode == 0 and int(got.stdout) == linux, got.stdout + got.stderr
    layer.proxies["any"].terminate()
    layer.proxies["any"].wait()

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Quiet(*a, directory=str(www)))
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        dport, other_port = http_server["v4"].rsplit(":", 1)[1], other.server_address[1]
        haproxy(layer, "haproxy", "--weight", "200", "--dport", dport, server="127.0.0.1:%d" % other_port)
        layer.proxy("last", "--weight", "100", "--dport", "%s,%d" % (dport, other_port))
        carried = counter("records carried")
        got = layer.client(["curl", "-sS", "--fail", "-o", str(tmp_path / "x.bin"), http_server["v4"] + "/small.bin"])
        assert got.returncode == 0, got.stderr
        assert sha256_file(tmp_path / "x.bin") == sha256_file(http_server["root"] / "small.bin")
        time.sleep(0.3)
        seen = [e for e in layer.events() if e["proxy"] == "last"]
        assert [tuple(e["hops"]) for e in seen] == [("last",)], seen  # a new connection, not haproxy's client's
        assert seen[0]["original_dst"] == "127.0.0.1:%d" % other_port
        assert seen[0]["process"]["name"] == "haproxy"
        assert counter("records carried") == carried
    finally:
        other.shutdown()


def test_registering_from_python(layer, http_server, tmp_path):
    """wfpr.add_redirector, as a notebook would register a running mitmdump."""
    if layer.backend != "ebpf":
        pytest.skip("add_redirector registers a running proxy with a wfpr daemon (eBPF)")
    import wfpr
    dport = http_server["v4"].rsplit(":", 1)[1]
    port = free_port()
    mitm = in_cgroup(layer, [MITMDUMP, "--mode", "transparent", "--listen-host", "127.0.0.1", "--listen-port",
                             str(port), "--set", "confdir=" + str(tmp_path / "mitm")],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port, mitm)
    rid = wfpr.add_redirector("mitm", ("127.0.0.1", port), pid=mitm.pid, weight=200, match="dport=" + dport,
                              daemon=layer.control)
    assert len(rid) == 16
    with pytest.raises(wfpr.WSAError, match="registered already"):
        wfpr.add_redirector("mitm", ("127.0.0.1", port), pid=mitm.pid, daemon=layer.control)
    layer.proxy("last", "--weight", "100", "--dport", dport)
    assert fetch_both(layer, http_server, tmp_path) >= 1
    assert set(hops_seen(layer, "last")) == {("mitm", "last")}
    wfpr.remove_redirector("mitm", daemon=layer.control)
    assert "unmodified proxy mitm removed" in layer.daemon_said()


def test_refusals(layer):
    """What is refused: on eBPF, a process outside the layer's cgroup, an
    address the process does not listen on, neither or both of --pid and
    --cgroup; on preload, a proxy without the broker's key."""
    port = free_port()
    if layer.backend == "preload":
        wrong = layer.tmp / "wrong.key"
        wrong.write_text("0" * 64 + "\n")
        for key_file, said in (("/dev/null", "cannot read the broker's key from /dev/null"),
                               (str(wrong), "refused to register nokey")):
            err = layer.tmp / "nokey.err"
            proc = layer.started([WFPR, "redirector", "run", "--broker", layer.broker, "--name", "nokey", "--listen",
                                  "127.0.0.1:%d" % port, "--key-file", key_file, "--", PY, "-c",
                                  "import socket, time; s = socket.socket(); s.bind(('127.0.0.1', %d)); s.listen(); "
                                  "time.sleep(30)" % port], stderr=open(err, "w"))
            deadline = time.time() + 30
            while said not in err.read_text():
                assert proc.poll() is None and time.time() < deadline, err.read_text()
                time.sleep(0.05)
            assert "registered with" not in err.read_text()
            proc.kill()
            proc.wait()
        assert "WSAEACCES" in err.read_text()
        return
    r = subprocess.run([WFPR, "redirector", "add", "--control", layer.control, "--name", "x", "--listen",
                        "127.0.0.1:%d" % port, "--pid", str(os.getpid())], capture_output=True, text=True)
    assert r.returncode == 1 and "outside the layer's cgroup" in r.stderr, r.stderr
    sleeper = in_cgroup(layer, ["sleep", "60"])
    time.sleep(0.2)
    r = subprocess.run([WFPR, "redirector", "add", "--control", layer.control, "--name", "x", "--listen",
                        "127.0.0.1:%d" % port, "--pid", str(sleeper.pid)], capture_output=True, text=True)
    assert r.returncode == 1 and "has no TCP socket listening on" in r.stderr, r.stderr
    r = subprocess.run([WFPR, "redirector", "add", "--control", layer.control, "--name", "x", "--listen",
                        "127.0.0.1:1"], capture_output=True, text=True)
    assert r.returncode == 2 and "--pid PID or --cgroup PATH" in r.stderr, r.stderr
    r = subprocess.run([WFPR, "redirector", "remove", "--control", layer.control, "--name", "nobody"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "no redirector is named nobody" in r.stderr, r.stderr


WFPR_AWARE = r"""
import socket, sys, wfpr
wfpr.ebpf_attach()
dst = ("127.0.0.1", int(sys.argv[1]))
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen(8)
print(l.getsockname()[1], flush=True)
sys.stdin.readline()  # registered
a, _ = l.accept()
b, _ = l.accept()
rb = wfpr.query_redirect_records(b)  # QUERY works for a proxy registered as unmodified
print("hops", *[h.process.pid for h in wfpr.RedirectRecords(rb).hops], flush=True)
first = socket.socket()
wfpr.set_redirect_records(first, rb)  # SET: b's record, though a's is the oldest to carry
first.connect(dst)
second = socket.create_connection(dst)  # no SET: a's record is carried
print("done", first.getsockname()[1], second.getsockname()[1], flush=True)
sys.stdin.readline()
"""


def test_query_and_set_on_an_unmodified_proxy(layer, http_server, tmp_path):
    """A proxy registered as unmodified may still QUERY, and SET overrides
    the automatic carry: with a's and b's connections waiting, a SET of b's
    record goes out with b's record, and the next connect carries a's."""
    if layer.backend != "ebpf":
        pytest.skip("a wfpr-aware proxy under the shim QUERYs and SETs through libwfpr, not the shim")
    dport = http_server["v4"].rsplit(":", 1)[1]
    proxy = in_cgroup(layer, [PY, "-c", WFPR_AWARE, dport], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    port = int(proxy.stdout.readline())
    r = subprocess.run([WFPR, "redirector", "add", "--control", layer.control, "--name", "aware", "--listen",
                        "127.0.0.1:%d" % port, "--pid", str(proxy.pid), "--weight", "200", "--dport", dport],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    proxy.stdin.write("go\n")
    proxy.stdin.flush()
    layer.proxy("last", "--weight", "100", "--dport", dport)
    hold = "import socket, sys, time; s = socket.create_connection(('127.0.0.1', %s)); time.sleep(20)" % dport
    a = in_cgroup(layer, [PY, "-c", hold])
    time.sleep(0.5)
    b = in_cgroup(layer, [PY, "-c", hold])
    assert proxy.stdout.readline().split() == ["hops", str(b.pid)]
    done, first_port, second_port = proxy.stdout.readline().split()
    assert done == "done"
    time.sleep(0.3)
    # by the port each connect came from: the last proxy's workers may log them in either order
    seen = {int(e["client"].rsplit(":", 1)[1]): (tuple(e["hops"]), e["process"]["pid"]) for e in layer.events()
            if e["proxy"] == "last" and e["event"] == "connect"}
    assert seen == {int(first_port): (("aware", "last"), b.pid), int(second_port): (("aware", "last"), a.pid)}, seen
