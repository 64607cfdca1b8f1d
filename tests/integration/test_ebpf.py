"""The eBPF backend (root): the preload backend's scenarios again with
`--backend ebpf`, and what only the kernel can do: a statically linked client,
records that cannot be forged, and cleanup that leaves nothing behind.
Where the programs cannot load, every test here is skipped with the reason."""
import glob
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from itsupport import INSPECT_RULE, PASS_RULE, PY, WFPR, assert_chain, sha256_file
from test_load import CLIENT as LOAD_CLIENT, echo_server  # noqa: F401 - fixture
from test_udp import CLIENT as UDP_CLIENT, udp_echo  # noqa: F401 - fixture

EBPF = ("--backend", "ebpf")
STATIC_FETCH = os.path.join(os.path.dirname(WFPR), "static-fetch")


def leftovers():
    """BPF programs, pins and cgroups of any wfpr eBPF instance."""
    progs = subprocess.run(["bpftool", "prog", "show"], capture_output=True, text=True).stdout
    names = sorted({line.split("name ")[1].split()[0] for line in progs.splitlines()
                    if " name wfpr_" in line})
    pins = glob.glob("/sys/fs/bpf/wfpr/*")
    cgroups = [p for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified") for p in glob.glob(root + "/wfpr-*")]
    return names, pins, cgroups


@pytest.fixture(scope="module", autouse=True)
def ebpf_available(tmp_path_factory):
    rule = tmp_path_factory.mktemp("probe") / "probe.lua"
    rule.write_text(PASS_RULE)
    probe = subprocess.run([WFPR, "run", *EBPF, "--rules", str(rule), "--", "true"],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        reason = " ".join(probe.stderr.split())
        print("\nSKIP the eBPF backend's tests: " + reason)
        pytest.skip("the eBPF backend is not available here: " + reason)
    assert leftovers() == ([], [], [])


CHAINS = [["alpha"], ["alpha", "beta"], ["alpha", "beta", "gamma"]]


@pytest.mark.parametrize("names", CHAINS, ids=lambda n: "%d-proxies" % len(n))
def test_curl_through_chain(names, http_server, rules, wfpr_run, tmp_path):
    proxies = [(n, rules(n, INSPECT_RULE) if i % 2 else rules(n)) for i, n in enumerate(names)]
    out = tmp_path / "got.bin"
    run = wfpr_run(proxies, ["curl", "-sS", "--fail", "-o", str(out), http_server["v4"] + "/small.bin"], extra=EBPF)
    assert run.returncode == 0, run.stderr
    assert sha256_file(out) == sha256_file(http_server["root"] / "small.bin")
    assert_chain(run, names, connections=1)  # each proxy once, in order: no loop
    assert all(e["original_dst"] == http_server["v4"][len("http://"):] for e in run.events("connect"))
    assert all(e["error"] is None and e["bytes_down"] > 256 << 10 for e in run.events("close"))


def test_big_download_through_two(http_server, rules, wfpr_run, tmp_path):
    out = tmp_path / "big.bin"
    run = wfpr_run([("alpha", rules("alpha")), ("beta", rules("beta", INSPECT_RULE))],
                   ["curl", "-sS", "--fail", "-o", str(out), http_server["v4"] + "/big.bin"], extra=EBPF)
    assert run.returncode == 0, run.stderr
    assert sha256_file(out) == sha256_file(http_server["root"] / "big.bin")
    assert_chain(run, ["alpha", "beta"], connections=1)


def test_ipv6_through_two(http_server, rules, wfpr_run, tmp_path):
    out = tmp_path / "got.bin"
    run = wfpr_run([("alpha", rules("alpha")), ("beta", rules("beta"))],
                   ["curl", "-6", "-sS", "--fail", "-o", str(out), http_server["v6"] + "/small.bin"], extra=EBPF)
    assert run.returncode == 0, run.stderr
    assert sha256_file(out) == sha256_file(http_server["root"] / "small.bin")
    assert_chain(run, ["alpha", "beta"], connections=1)
    assert all(e["original_dst"].startswith("[::1]:") for e in run.events("connect"))


def test_udp_through_two(udp_echo, rules, wfpr_run):  # noqa: F811 - the fixture
    host, port = udp_echo
    run = wfpr_run([("alpha", rules("alpha")), ("beta", rules("beta"))], [PY, "-c", UDP_CLIENT, host, str(port)],
                   extra=EBPF)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["%s:%d" % (host, port)] * 5  # replies from the original destination
    connects = run.events("connect", "udp")
    assert [e["hops"] for e in connects if e["proxy"] == "alpha"] == [["alpha"]]
    assert [e["hops"] for e in connects if e["proxy"] == "beta"] == [["alpha", "beta"]]
    assert all(e["original_dst"] == "%s:%d" % (host, port) for e in connects)


def test_static_binary_is_redirected(http_server, rules, wfpr_run, tmp_path):
    if not os.path.exists(STATIC_FETCH):
        pytest.skip("build/static-fetch is not built (sanitizer builds cannot link statically)")
    port = http_server["v4"].rsplit(":", 1)[1]
    want = sha256_file(http_server["root"] / "small.bin")
    out = tmp_path / "got.bin"
    command = ["sh", "-c", '"$0" 127.0.0.1 "$1" /small.bin > "$2"', STATIC_FETCH, port, str(out)]
    proxies = [("alpha", rules("alpha")), ("beta", rules("beta"))]

    # the preload backend cannot see it: no proxy has a connection, and wfpr run says so
    run = wfpr_run(proxies, [STATIC_FETCH, "127.0.0.1", port, "/not-here"])  # a text answer: a 404 page
    assert run.events("connect") == []
    assert "static-fetch is statically linked" in run.stderr and "--backend ebpf" in run.stderr, run.stderr
    assert [e["event"] for e in run.log if e["proxy"] == "wfpr run"] == ["escape"]

    # the kernel can
    run = wfpr_run(proxies, command, extra=EBPF)
    assert run.returncode == 0, run.stderr
    assert sha256_file(out) == want
    assert_chain(run, ["alpha", "beta"], connections=1)


FORGE = r"""
import errno, os, socket, struct, sys
SOL, SET = 0x57465052, 3
host, port = sys.argv[1], int(sys.argv[2])

def hop(token):
    addr = lambda p: bytes([4]) + struct.pack(">H", p) + socket.inet_aton("127.0.0.1")
    attrs = [(1, os.urandom(16)), (2, struct.pack(">Q", 1)), (3, struct.pack(">I", os.getpid())), (4, b"\x06"),
             (5, addr(port)), (6, addr(40000)), (7, addr(port)), (8, struct.pack(">Q", 0)), (9, token)]
    body = b"".join(struct.pack(">HH", t, len(v)) + v for t, v in attrs)
    return struct.pack(">HH", 1, len(body)) + body

h = hop(os.urandom(16))
blobs = {"well formed, made-up token": b"WFPR\x01\x00\x00\x01" + struct.pack(">I", 12 + len(h)) + h,
         "random bytes": os.urandom(300), "too short": b"WFPR", "too long": os.urandom(5000)}
for name, blob in blobs.items():
    s = socket.socket()
    try:
        s.setsockopt(SOL, SET, blob)
        print("ACCEPTED", name)
    except OSError as e:
        print("refused", name, errno.errorcode[e.errno])
    # the refused SET does not skip the redirect: this request goes through the proxy
    s.connect((host, port))
    s.sendall(b"GET /small.bin HTTP/1.0\r\n\r\n")
    while s.recv(65536):
        pass
    s.close()
"""


def test_forged_set_is_refused(http_server, rules, wfpr_run):
    port = http_server["v4"].rsplit(":", 1)[1]
    run = wfpr_run([("alpha", rules("alpha"))], [PY, "-c", FORGE, "127.0.0.1", port], extra=EBPF)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 4 and all(line.startswith("refused") for line in lines), lines
    assert all(line.split()[-1] == "EINVAL" for line in lines if "too long" not in line), lines
    assert len(run.events("connect")) == 4  # every one still redirected to alpha


def test_cleanup_after_exit_and_ctrl_c(rules, started):
    rule = rules("alpha")
    run = subprocess.run([WFPR, "run", *EBPF, "--rules", rule, "--", "true"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert leftovers() == ([], [], [])

    proc = started([WFPR, "run", *EBPF, "--rules", rule, "--", "sleep", "60"], ready=True,
                   stderr=subprocess.DEVNULL)
    names, pins, cgroups = leftovers()
    assert names and pins == ["/sys/fs/bpf/wfpr/%d" % proc.pid] and len(cgroups) == 1, leftovers()
    status = subprocess.run([WFPR, "ebpf", "status"], capture_output=True, text=True).stdout
    assert "instance %d (running)" % proc.pid in status and "redirector 0: id " in status, status
    assert ", 2 processes" in status, status  # the proxy and COMMAND
    # cleanup leaves a running instance alone
    cleanup = subprocess.run([WFPR, "ebpf", "cleanup"], capture_output=True, text=True)
    assert cleanup.returncode == 0 and "nothing to clean up" in cleanup.stdout, cleanup.stdout
    assert proc.poll() is None and all(leftovers())
    proc.send_signal(signal.SIGINT)  # Ctrl-C: passed to COMMAND; then everything is removed
    assert proc.wait(timeout=30) == 128 + signal.SIGINT
    assert leftovers() == ([], [], [])


def test_cleanup_after_a_crash(rules, started):
    rule = rules("alpha")
    proc = started([WFPR, "run", *EBPF, "--rules", rule, "--", "sleep", "60"], ready=True,
                   stderr=subprocess.DEVNULL)
    proc.kill()  # the loader dies without cleaning up
    proc.wait()
    names, pins, cgroups = leftovers()
    assert names and pins and cgroups
    status = subprocess.run([WFPR, "ebpf", "status"], capture_output=True, text=True)
    assert "owner gone" in status.stdout, status.stdout
    cleanup = subprocess.run([WFPR, "ebpf", "cleanup"], capture_output=True, text=True)
    assert cleanup.returncode == 0 and "removed instance %d" % proc.pid in cleanup.stdout, cleanup.stdout
    assert leftovers() == ([], [], [])
    assert "no wfpr eBPF instance" in subprocess.run([WFPR, "ebpf", "status"], capture_output=True, text=True).stdout

    # the next run removes what a crashed one left, before it loads its own
    proc = started([WFPR, "run", *EBPF, "--rules", rule, "--", "sleep", "60"], ready=True,
                   stderr=subprocess.DEVNULL)
    proc.kill()
    proc.wait()
    assert all(leftovers())
    run = subprocess.run([WFPR, "run", *EBPF, "--rules", rule, "--", "true"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert leftovers() == ([], [], [])


def test_cleanup_all_ends_a_running_instance(rules, started):
    proc = started([WFPR, "run", *EBPF, "--rules", rules("alpha"), "--", "sleep", "60"], ready=True,
                   stderr=subprocess.DEVNULL)
    cleanup = subprocess.run([WFPR, "ebpf", "cleanup", "--all"], capture_output=True, text=True)
    assert cleanup.returncode == 0 and "removed instance %d" % proc.pid in cleanup.stdout, cleanup.stdout
    assert proc.wait(timeout=30) == 128 + signal.SIGKILL  # COMMAND was in the cgroup
    assert leftovers() == ([], [], [])


def test_needs_root_says_so():
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o755)
        rule = os.path.join(d, "alpha.lua")
        with open(rule, "w") as f:
            f.write(PASS_RULE)
        os.chmod(rule, 0o644)
        run = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                              WFPR, "run", *EBPF, "--rules", rule, "--", "true"], capture_output=True, text=True)
    if "Permission denied" in run.stderr:
        pytest.skip("the build tree is not reachable by the user nobody here: " + run.stderr.strip())
    assert run.returncode != 0
    assert "needs root" in run.stderr, run.stderr


PY_BINDING = r"""
import socket, sys, wfpr
host, port = sys.argv[1], int(sys.argv[2])
wfpr.ebpf_attach()
s = socket.socket()
print("available", wfpr.ebpf_available(s))
try:
    wfpr.set_redirect_records(s, b"WFPR" + bytes(200))
    print("accepted")
except wfpr.WSAError as e:
    print("refused", type(e).__name__)
# a connection nobody redirected (to the proxy's own address) has no record
listener = socket.create_server(("127.0.0.1", 0))
c = socket.create_connection(listener.getsockname())
a, _ = listener.accept()
try:
    wfpr.query_redirect_records(a)
except wfpr.WSAError as e:
    print("query", type(e).__name__)
"""


def test_python_binding(http_server, rules, wfpr_run):
    pytest.importorskip("wfpr")
    port = http_server["v4"].rsplit(":", 1)[1]
    run = wfpr_run([("alpha", rules("alpha"))], [PY, "-c", PY_BINDING, "127.0.0.1", port], extra=EBPF)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "available True"
    assert lines[1].startswith("refused") and "Inval" in lines[1], lines
    # the test's own listener is not a redirector: its connection went to alpha, which relayed it
    assert lines[2].startswith("query"), lines


UDP6_CLIENT = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.settimeout(5)
for i in range(3):
    s.sendto(b"six %d" % i, ("::1", int(sys.argv[1])))
    data, peer = s.recvfrom(100)
    print(data.decode(), "[%s]:%d" % peer[:2])
"""


def test_udp_over_ipv6(rules, wfpr_run):
    """IPv6 datagrams go to the proxies' [::1] addresses; replies come from the original destination."""
    server = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    server.bind(("::1", 0))
    port = server.getsockname()[1]

    def serve():
        for _ in range(3):
            data, peer = server.recvfrom(100)
            server.sendto(b"echo " + data, peer)
    threading.Thread(target=serve, daemon=True).start()
    run = wfpr_run([("alpha", rules("alpha")), ("beta", rules("beta"))], [PY, "-c", UDP6_CLIENT, str(port)],
                   extra=EBPF)
    server.close()
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["echo six %d [::1]:%d" % (i, port) for i in range(3)]
    connects = run.events("connect", "udp")
    assert [(e["proxy"], e["hops"]) for e in connects] == [("alpha", ["alpha"]), ("beta", ["alpha", "beta"])]
    assert all(e["original_dst"] == "[::1]:%d" % port for e in connects)


V6ONLY_CLIENT = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
s.connect(("::1", int(sys.argv[1])))
s.sendall(b"GET /small.bin HTTP/1.0\r\n\r\n")
total = 0
while True:
    b = s.recv(65536)
    if not b:
        break
    total += len(b)
print(total)
"""


def test_ipv6_only_socket(http_server, rules, wfpr_run):
    """An IPV6_V6ONLY socket cannot reach an IPv4-mapped address: it goes to the proxies' [::1]."""
    port = http_server["v6"].rsplit(":", 1)[1]
    run = wfpr_run([("alpha", rules("alpha")), ("beta", rules("beta"))], [PY, "-c", V6ONLY_CLIENT, port], extra=EBPF)
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) > 256 << 10
    assert_chain(run, ["alpha", "beta"], connections=1)
    assert all(e["client"].startswith("[::1]:") for e in run.events("connect"))


def test_proxy_killed_mid_transfer(http_server, rules, tmp_path, started):
    """As on the preload backend: the client sees an error at once, the dead
    proxy's redirector is switched off, and the next fetch goes through the
    proxy that is left."""
    out, log = tmp_path / "got.bin", tmp_path / "log.jsonl"
    script = ('curl -sS --limit-rate 5M -o /dev/null "$0/big.bin"; echo "first $?"; '
              'curl -sS --fail -o "$1" "$0/small.bin"; echo "second $?"')
    proc = started([WFPR, "run", *EBPF, "--rules", rules("alpha"), "--proxy", "beta=" + rules("beta"),
                    "--log", str(log), "--", "sh", "-c", script, http_server["v4"], str(out)],
                   ready=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def beta_relaying():
        return log.exists() and any('"connect"' in line and '"proxy":"beta"' in line
                                    for line in log.read_text().splitlines())
    deadline = time.time() + 30
    while time.time() < deadline and not beta_relaying():
        time.sleep(0.05)
    assert beta_relaying(), "beta never got the first download's connection"
    children = sorted(int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid), "-x", "wfpr"],
                                                     capture_output=True, text=True).stdout.split())
    assert len(children) == 2, children  # alpha, then beta (COMMAND is sh)
    os.kill(children[1], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "first 0" not in stdout, "the transfer cannot have finished through a dead proxy"
    assert "second 0" in stdout, stdout + stderr
    assert "proxy beta exited; its connections go on without it" in stderr
    assert sha256_file(out) == sha256_file(http_server["root"] / "small.bin")
    last = [json.loads(line) for line in log.read_text().splitlines() if '"connect"' in line][-1]
    assert last["proxy"] == "alpha" and last["hops"] == ["alpha"]


@pytest.mark.parametrize("workers", [1, 2])
def test_1000_concurrent_through_two(workers, echo_server, rules, wfpr_run):  # noqa: F811 - the fixture
    n = 1000
    run = wfpr_run([("alpha", rules("alpha")), ("beta", rules("beta"))],
                   [PY, "-c", LOAD_CLIENT, str(echo_server), str(n)], timeout=300,
                   extra=[*EBPF, "--workers", str(workers)])
    assert run.returncode == 0, run.stderr
    ok, total, errors = run.stdout.split(" ", 2)
    assert int(ok) == n, (ok, errors, [e for e in run.events("error")][:3])
    summary = run.summary()
    for name in ("alpha", "beta"):
        assert summary[name]["connections"] == n and summary[name]["failed"] == 0
        assert summary[name]["bytes_up"] == int(total) == summary[name]["bytes_down"]
    assert all(len(e["hops"]) == (1 if e["proxy"] == "alpha" else 2) for e in run.events("connect"))
    status = subprocess.run([WFPR, "ebpf", "status"], capture_output=True, text=True).stdout
    assert "no wfpr eBPF instance" in status  # and nothing left behind
