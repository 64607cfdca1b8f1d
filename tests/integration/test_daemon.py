"""The host-wide layer: `wfpr daemon` on a cgroup of the test's own (never the
host's root in a test), proxies started on their own with `wfpr proxy
--backend ebpf` and match options, and real clients in that cgroup: curl, a
statically linked client, Python. The same filters on the preload backend,
enforced by the broker. Where BPF cannot load, the eBPF tests are skipped
with the reason."""
import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from itsupport import INSPECT_RULE, PASS_RULE, PY, SHIM, WFPR, sha256_file

STATIC_FETCH = os.path.join(os.path.dirname(WFPR), "static-fetch")
LOG_RULE = INSPECT_RULE


def cgroup2_mount():
    with open("/proc/self/mounts") as f:
        for line in f:
            dev, path, kind = line.split()[:3]
            if kind == "cgroup2":
                return path
    return None


class Layer:
    """A daemon on a fresh cgroup; proxies and clients of one test."""

    def __init__(self, tmp_path, started, daemon_options=()):
        self.tmp = tmp_path
        self.started = started
        self.control = str(tmp_path / "control.sock")
        self.log = str(tmp_path / "log.jsonl")
        self.cgroup = os.path.join(cgroup2_mount(), "wfprtest-%d-%d" % (os.getpid(), time.monotonic_ns() % 10**6))
        os.mkdir(self.cgroup)
        self.daemon_err = open(tmp_path / "daemon.err", "w+")
        self.daemon = started([WFPR, "daemon", "--cgroup", self.cgroup, "--control", self.control, *daemon_options],
                              ready=True, stderr=self.daemon_err)
        self.proxies = {}

    def proxy(self, name, *options, rules=PASS_RULE):
        path = self.tmp / (name + ".lua")
        path.write_text(rules)
        err = open(self.tmp / (name + ".err"), "a+")
        proc = self.started([WFPR, "proxy", "--backend", "ebpf", "--control", self.control, "--name", name,
                             "--rules", str(path), "--log", self.log, *options], ready=True, stderr=err)
        self.proxies[name] = proc
        return proc

    def run(self, args, **kwargs):
        """args, run inside the daemon's cgroup."""
        enter = 'echo $$ > "$0/cgroup.procs" && exec "$@"'
        return subprocess.run(["sh", "-c", enter, self.cgroup, *args], capture_output=True, text=True,
                              timeout=kwargs.pop("timeout", 120), **kwargs)

    def events(self, event="connect"):
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            return [e for e in map(json.loads, f) if e["event"] == event]

    def daemon_said(self):
        self.daemon_err.seek(0)
        return self.daemon_err.read()

    def close(self):
        self.started.cleanup()
        self.started.procs.clear()
        for _ in range(100):  # the killed processes leave their cgroups a moment later
            try:
                for dirpath, dirs, _ in os.walk(self.cgroup, topdown=False):
                    os.rmdir(dirpath)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.05)


@pytest.fixture(scope="module")
def ebpf_ok(tmp_path_factory):
    if os.geteuid() != 0 or not cgroup2_mount():
        pytest.skip("the daemon needs root and a cgroup v2 hierarchy")
    probe = tmp_path_factory.mktemp("probe") / "p.lua"
    probe.write_text(PASS_RULE)
    run = subprocess.run([WFPR, "run", "--backend", "ebpf", "--rules", str(probe), "--", "true"],
                         capture_output=True, text=True, timeout=60)
    if run.returncode != 0:
        pytest.skip("the eBPF backend is not available here: " + " ".join(run.stderr.split()))


@pytest.fixture
def layer(ebpf_ok, tmp_path, started):
    lay = Layer(tmp_path, started)
    yield lay
    lay.close()


def fetch(layer, url, out):
    return layer.run(["curl", "-sS", "--fail", "-o", str(out), url])


def test_filters_choose_traffic(layer, http_server, tmp_path):
    """web takes only the HTTP server's port, all takes everything; web's
    weight puts it first. Each connection visits exactly the proxies whose
    filters match, in weight order, once each; the log names the client."""
    port = int(http_server["v4"].rsplit(":", 1)[1])
    layer.proxy("all")
    layer.proxy("web", "--dport", str(port), "--proto", "tcp", "--weight", "200", rules=LOG_RULE)
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen(8)
    other_port = other.getsockname()[1]
    threading.Thread(target=lambda: [other.accept()[0].close() for _ in range(2)], daemon=True).start()

    out = tmp_path / "got.bin"
    assert fetch(layer, http_server["v4"] + "/small.bin", out).returncode == 0
    assert sha256_file(out) == sha256_file(http_server["root"] / "small.bin")
    # (it waits for the server's end: the proxy reads a client's exe from /proc when it accepts, and a client
    # that has exited by then has none, as docs/daemon.md says)
    py = layer.run([PY, "-c", "import socket; socket.create_connection(('127.0.0.1', %d)).recv(1)" % other_port])
    assert py.returncode == 0, py.stderr
    if os.path.exists(STATIC_FETCH):
        got = layer.run(["sh", "-c", '"$0" 127.0.0.1 "$1" /small.bin > "$2"', STATIC_FETCH, str(port),
                         str(tmp_path / "static.bin")])
        assert got.returncode == 0, got.stderr
        assert sha256_file(tmp_path / "static.bin") == sha256_file(http_server["root"] / "small.bin")
    time.sleep(0.3)
    connects = layer.events()
    to_web = [e for e in connects if e["original_dst"].endswith(":%d" % port)]
    to_other = [e for e in connects if e["original_dst"].endswith(":%d" % other_port)]
    clients = 2 if os.path.exists(STATIC_FETCH) else 1
    assert sorted((e["proxy"], tuple(e["hops"])) for e in to_web) == \
        sorted([("web", ("web",)), ("all", ("web", "all"))] * clients), to_web
    assert [(e["proxy"], e["hops"]) for e in to_other] == [("all", ["all"])], to_other
    assert {e["process"]["name"] for e in to_web} <= {"curl", "static-fetch"}
    assert to_other[0]["process"]["name"].startswith("python")
    assert to_other[0]["process"]["exe"] == os.path.realpath(PY)


def test_unmatched_traffic_is_not_redirected(layer, http_server, tmp_path):
    """A proxy that takes only UDP, and one that takes only another port:
    a TCP fetch matches neither, and neither sees it."""
    port = int(http_server["v4"].rsplit(":", 1)[1])
    layer.proxy("dns", "--proto", "udp", "--dport", "53")
    layer.proxy("elsewhere", "--dport", "1-%d,%d-65535" % (port - 1, port + 1), "--exclude-dst", "127.0.0.0/8")
    assert fetch(layer, http_server["v4"] + "/small.bin", tmp_path / "x").returncode == 0
    time.sleep(0.2)
    assert layer.events() == []
    status = subprocess.run([WFPR, "ebpf", "status", "--control", layer.control], capture_output=True, text=True)
    assert "dns" in status.stdout and "proto=udp dport=53" in status.stdout, status.stdout
    assert "exclude-dst=127.0.0.0/8" in status.stdout, status.stdout


def test_process_conditions(layer, http_server, tmp_path):
    """--comm, --exe, --uid and --cgroup: curl's connection goes to the proxy
    that asked for curl, Python's to the one that asked for its executable;
    a proxy's own outbound connection is tested as its client's."""
    sub = os.path.join(layer.cgroup, "inner")
    os.mkdir(sub)
    layer.proxy("curls", "--comm", "curl", "--uid", "0", "--weight", "300")
    layer.proxy("pythons", "--exe", os.path.realpath(PY), "--weight", "200")
    layer.proxy("inner", "--cgroup", sub, "--weight", "100")
    assert fetch(layer, http_server["v4"] + "/small.bin", tmp_path / "a").returncode == 0
    url = http_server["v4"] + "/small.bin"
    py = layer.run([PY, "-c", "import urllib.request as u; u.urlopen(%r).read()" % url])
    assert py.returncode == 0, py.stderr
    inner = subprocess.run(["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', sub, "curl", "-sS", "-o",
                            "/dev/null", url], capture_output=True, text=True, timeout=60)
    assert inner.returncode == 0, inner.stderr
    time.sleep(0.3)
    seen = sorted((e["process"]["exe"], e["proxy"], tuple(e["hops"])) for e in layer.events())
    curl = "/usr/bin/curl"
    assert seen == sorted([
        (curl, "curls", ("curls",)),                     # curl in the layer's cgroup
        (curl, "curls", ("curls",)),                     # curl in inner: curls first,
        (curl, "inner", ("curls", "inner")),             # then inner, for curl's connection
        (os.path.realpath(PY), "pythons", ("pythons",)),  # Python: only the proxy that asked for it
    ]), seen


def test_killed_proxy_is_skipped_then_comes_back(layer, http_server, tmp_path):
    """A proxy killed mid-transfer: the other proxy's transfer finishes
    intact, new connections skip the dead one; restarted under its name, it
    takes its redirector back and is asked again."""
    port = int(http_server["v4"].rsplit(":", 1)[1])
    layer.proxy("survivor", rules=LOG_RULE)
    victim = layer.proxy("victim", "--dport", str(port), "--weight", "200", rules=LOG_RULE)
    out = tmp_path / "big.bin"
    enter = 'echo $$ > "$0/cgroup.procs" && exec "$@"'
    big = subprocess.Popen(["sh", "-c", enter, layer.cgroup, "curl", "-sS", "--fail", "--limit-rate", "20M", "-o",
                            str(out), http_server["v4"] + "/big.bin"], stderr=subprocess.PIPE, text=True)
    # a second transfer through the survivor alone (another server port)
    side = http_server["v6"] + "/big.bin"
    side_out = tmp_path / "side.bin"
    side_proc = subprocess.Popen(["sh", "-c", enter, layer.cgroup, "curl", "-sS", "--fail", "--limit-rate", "20M",
                                  "-o", str(side_out), side], stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    big.wait(timeout=120)   # its connection went through the victim: it breaks
    assert side_proc.wait(timeout=120) == 0, side_proc.stderr.read()
    assert sha256_file(side_out) == sha256_file(http_server["root"] / "big.bin")
    for _ in range(50):
        if "victim (pid %d) is gone" % victim.pid in layer.daemon_said():
            break
        time.sleep(0.1)
    assert "victim (pid %d) is gone" % victim.pid in layer.daemon_said()
    assert fetch(layer, http_server["v4"] + "/small.bin", tmp_path / "s1").returncode == 0
    time.sleep(0.2)
    assert [e["hops"] for e in layer.events() if e["original_dst"].endswith(":%d" % port)][-1] == ["survivor"]
    layer.proxy("victim", "--dport", str(port), "--weight", "200", rules=LOG_RULE)
    assert "victim" in layer.daemon_said() and "takes back" in layer.daemon_said()
    assert fetch(layer, http_server["v4"] + "/small.bin", tmp_path / "s2").returncode == 0
    time.sleep(0.2)
    last = [e for e in layer.events() if e["original_dst"].endswith(":%d" % port)][-2:]
    assert sorted(tuple(e["hops"]) for e in last) == [("victim",), ("victim", "survivor")]


def test_second_daemon_and_taken_name_are_refused(layer, tmp_path):
    second = subprocess.run([WFPR, "daemon", "--cgroup", layer.cgroup, "--control", str(tmp_path / "other.sock")],
                            capture_output=True, text=True, timeout=30)
    assert second.returncode == 1 and "already serves the cgroup" in second.stderr, second.stderr
    sub = os.path.join(layer.cgroup, "other")
    os.mkdir(sub)
    same_socket = subprocess.run([WFPR, "daemon", "--cgroup", sub, "--control", layer.control],
                                 capture_output=True, text=True, timeout=30)
    assert same_socket.returncode == 1 and "another daemon answers on" in same_socket.stderr, same_socket.stderr
    layer.proxy("solo")
    again = subprocess.run([WFPR, "proxy", "--backend", "ebpf", "--control", layer.control, "--name", "solo"],
                           capture_output=True, text=True, timeout=30)
    assert again.returncode == 1 and "registered already" in again.stderr, again.stderr
    bad = subprocess.run([WFPR, "proxy", "--backend", "ebpf", "--control", layer.control, "--name", "x",
                          "--dport", "99999"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "dport" in bad.stderr, bad.stderr
    none = subprocess.run([WFPR, "proxy", "--backend", "ebpf", "--control", str(tmp_path / "nobody.sock"),
                           "--name", "y"], capture_output=True, text=True, timeout=30)
    assert none.returncode == 1 and "no wfpr daemon answers" in none.stderr, none.stderr


def test_killed_daemon_leaves_nothing_after_cleanup(layer):
    layer.proxy("p")
    layer.daemon.send_signal(signal.SIGKILL)
    layer.daemon.wait()
    subprocess.run([WFPR, "ebpf", "cleanup"], check=True, capture_output=True)
    progs = subprocess.run(["bpftool", "prog", "show"], capture_output=True, text=True).stdout
    assert " name wfpr_" not in progs
    assert not os.path.exists("/sys/fs/bpf/wfpr") or os.listdir("/sys/fs/bpf/wfpr") == []


ECHO_CLIENT = r"""
import hashlib, os, socket, sys, threading
port, n = int(sys.argv[1]), int(sys.argv[2])
bad = []
def one(i):
    data = os.urandom(4096 + i)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        got = b"".join(iter(lambda: s.recv(65536), b""))
    if hashlib.sha256(got).digest() != hashlib.sha256(data).digest():
        bad.append(i)
threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
for t in threads: t.start()
for t in threads: t.join()
print(len(bad))
"""


def test_a_thousand_connections_through_two_proxies(layer, started):
    """1,000 concurrent connections through two separately started proxies:
    each payload comes back intact (hashed at both ends)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1024)
    port = server.getsockname()[1]

    def serve():
        while True:
            try:
                c, _ = server.accept()
            except OSError:
                return

            def echo(c=c):
                with c:
                    for chunk in iter(lambda: c.recv(65536), b""):
                        c.sendall(chunk)
            threading.Thread(target=echo, daemon=True).start()
    threading.Thread(target=serve, daemon=True).start()
    layer.proxy("one", "--dport", str(port), "--weight", "200", "--workers", "2")
    layer.proxy("two", "--dport", str(port), "--workers", "2")
    run = layer.run(["sh", "-c", "ulimit -n 8192; exec \"$@\"", "sh", PY, "-c", ECHO_CLIENT, str(port), "1000"],
                    timeout=300)
    server.close()
    assert run.returncode == 0 and run.stdout.strip() == "0", run.stdout + run.stderr
    time.sleep(0.5)
    closes = [e for e in layer.events("close")]
    assert sum(1 for e in closes if e["proxy"] == "two" and e["hops"] == ["one", "two"]) == 1000


# ---- the preload backend: the broker enforces the same filters ----------------

def test_preload_broker_filters(http_server, tmp_path, started):
    port = int(http_server["v4"].rsplit(":", 1)[1])
    broker = str(tmp_path / "broker.sock")
    log = str(tmp_path / "log.jsonl")
    started([WFPR, "broker", "--socket", broker])
    for _ in range(100):
        if os.path.exists(broker):
            break
        time.sleep(0.05)
    rule = tmp_path / "r.lua"
    rule.write_text(LOG_RULE)
    started([WFPR, "proxy", "--broker", broker, "--name", "all", "--rules", str(rule), "--log", log], ready=True)
    started([WFPR, "proxy", "--broker", broker, "--name", "web", "--rules", str(rule), "--log", log,
             "--dport", str(port), "--comm", "curl", "--weight", "200"], ready=True)
    env = dict(os.environ, LD_PRELOAD=SHIM, WFPR_BROKER=broker)
    url = http_server["v4"] + "/small.bin"
    assert subprocess.run(["curl", "-sS", "--fail", "-o", str(tmp_path / "a"), url], env=env).returncode == 0
    py = subprocess.run([PY, "-c", "import urllib.request as u; u.urlopen(%r).read()" % url], env=env,
                        capture_output=True, text=True)
    assert py.returncode == 0, py.stderr
    time.sleep(0.3)
    with open(log) as f:
        connects = [e for e in map(json.loads, f) if e["event"] == "connect"]
    seen = sorted((e["process"]["name"][:4], e["proxy"], tuple(e["hops"])) for e in connects)
    assert seen == sorted([("curl", "web", ("web",)), ("curl", "all", ("web", "all")),
                           ("pyth", "all", ("all",))]), seen


PY_PROXY = r"""
import sys, time, wfpr
control, port = sys.argv[1], int(sys.argv[2])
with wfpr.Proxy(None, "pyproxy", daemon=control, match="proto=tcp dport=%d" % port, weight=500) as p:
    print("ready", flush=True)
    while not p.connections or p.connections[-1].bytes_down == 0:
        time.sleep(0.05)
    c = p.connections[-1]
    print(c.process.name, c.process.exe, [h.redirector_id == p.redirector_id for h in c.records.hops], flush=True)
"""


def test_python_program_registers_with_the_daemon(layer, http_server, tmp_path):
    """The library call from another program: a Python wfpr.Proxy registers
    with the daemon (daemon=PATH, a match and a weight) and sees curl."""
    port = int(http_server["v4"].rsplit(":", 1)[1])
    layer.proxy("after", rules=LOG_RULE)
    proc = subprocess.Popen([PY, "-c", PY_PROXY, layer.control, str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    layer.started.procs.append(proc)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    assert fetch(layer, http_server["v4"] + "/small.bin", tmp_path / "a").returncode == 0
    assert proc.stdout.readline().split() == ["curl", "/usr/bin/curl", "[True]"]
    time.sleep(0.2)
    after = [e for e in layer.events() if e["proxy"] == "after"]
    assert [e["hops"][1] for e in after] == ["after"] and len(after[0]["hops"]) == 2, after
    bad = subprocess.run([PY, "-c", "import wfpr; wfpr.Proxy(None, 'x', daemon=%r, match='dport=nope')" % layer.control],
                         capture_output=True, text=True)
    assert "WSAEINVAL" in bad.stderr and "dport: 'nope'" in bad.stderr, bad.stderr


def test_c_example_registers_with_the_daemon(layer, http_server, tmp_path):
    """examples/daemon_proxy.c, a proxy of its own written against the
    library, registers with a match and passes curl's connection on."""
    example = os.path.join(os.path.dirname(WFPR), "wfpr-daemon-proxy")
    if not os.path.exists(example):
        pytest.skip("the examples are not built")
    port = int(http_server["v4"].rsplit(":", 1)[1])
    proc = subprocess.Popen([example, "cexample", "proto=tcp dport=%d" % port, layer.control], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    layer.started.procs.append(proc)
    assert "registered at 127.0.0.1:" in proc.stdout.readline()
    layer.proxy("after", rules=LOG_RULE)  # the same weight, registered later: asked second
    out = tmp_path / "got.bin"
    assert fetch(layer, http_server["v4"] + "/small.bin", out).returncode == 0
    assert sha256_file(out) == sha256_file(http_server["root"] / "small.bin")
    line = proc.stdout.readline()
    assert line.startswith("curl (pid ") and "/usr/bin/curl) -> 127.0.0.1:%d, hop 1, REDIRECTED_BY_SELF" % port in line
    time.sleep(0.2)
    assert [e["hops"] for e in layer.events() if e["proxy"] == "after"] == [["cexample", "after"]]


def test_register_needs_the_listener(layer):
    """A process may register only an address its own socket listens on."""
    liar = subprocess.run([PY, "-c", "import wfpr; wfpr._wfpr.daemon_register(%r, 'liar', 100, '', '127.0.0.1', 9, "
                           "None, 0)" % layer.control], capture_output=True, text=True)
    assert liar.returncode != 0 and "has no TCP socket listening on 127.0.0.1:9" in liar.stderr, liar.stderr
    assert "refused: proxy liar: process" in layer.daemon_said()
