"""UDP: a Python client through two proxies to a real UDP echo server."""
import random
import shutil
import socket
import subprocess
import threading
import time

import pytest

from itsupport import PY


@pytest.fixture
def udp_echo():
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                data, peer = server.recvfrom(65536)
            except socket.timeout:
                continue
            server.sendto(b"echo:" + data, peer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield server.getsockname()
    stop.set()
    t.join()
    server.close()


CLIENT = r"""
import os, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
for i in range(5):
    data = os.urandom(100 + i * 300)
    s.sendto(data, (host, port))
    reply, peer = s.recvfrom(65536)
    assert reply == b"echo:" + data, i
    print("%s:%d" % peer)
"""


def test_udp_through_two(udp_echo, rules, wfpr_run):
    host, port = udp_echo
    run = wfpr_run([("alpha", rules("alpha")), ("beta", rules("beta"))], [PY, "-c", CLIENT, host, str(port)])
    assert run.returncode == 0, run.stderr
    # replies come from the original destination, not from a proxy
    assert run.stdout.split() == ["%s:%d" % (host, port)] * 5
    connects = run.events("connect", "udp")
    assert [e["hops"] for e in connects if e["proxy"] == "alpha"] == [["alpha"]]
    assert [e["hops"] for e in connects if e["proxy"] == "beta"] == [["alpha", "beta"]]
    assert all(e["original_dst"] == "%s:%d" % (host, port) for e in connects)
    closes = run.events("close", "udp")
    assert sorted(e["proxy"] for e in closes) == ["alpha", "beta"]
    assert all(e["bytes_up"] == sum(100 + i * 300 for i in range(5)) for e in closes)
    assert run.summary()["beta"]["flows"] == 1


IDLE_CLIENT = r"""
import socket, sys, time
host, port, pauses = sys.argv[1], int(sys.argv[2]), [float(p) for p in sys.argv[3:]]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
for i, pause in enumerate([0.0] + pauses):
    time.sleep(pause)
    s.sendto(b"after %.1f s" % pause, (host, port))
    reply, peer = s.recvfrom(65536)
    print(reply.decode(), "%s:%d" % peer)
"""

BACKENDS = [pytest.param((), id="preload"), pytest.param(("--backend", "ebpf"), id="ebpf")]


def needs(backend, run):
    if backend and "eBPF backend is not available" in run.stderr:
        pytest.skip(run.stderr.strip())


@pytest.mark.parametrize("backend", BACKENDS)
def test_udp_flow_outlives_its_idle_time(backend, udp_echo, rules, wfpr_run):
    """A flow silent past --udp-idle-timeout (0.3 s) is started anew by the
    sender's next datagram, with a fresh record; one silent past the proxy's
    own expiry (0.3 + 5 s) too. Every datagram gets its reply (they used to
    be dropped after the engine's 30 s expiry)."""
    host, port = udp_echo
    run = wfpr_run([("alpha", rules("alpha")), ("beta", rules("beta"))],
                   [PY, "-c", IDLE_CLIENT, host, str(port), "1.0", "6.0"], extra=[*backend, "--udp-idle-timeout", "300"])
    needs(backend, run)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["echo:after %s s %s:%d" % (p, host, port) for p in ("0.0", "1.0", "6.0")]
    for name, hops in (("alpha", ["alpha"]), ("beta", ["alpha", "beta"])):
        connects = [e for e in run.events("connect", "udp") if e["proxy"] == name]
        assert [e["hops"] for e in connects] == [hops] * 3, connects  # three flows, each with a record
        assert len({e["id"] for e in connects}) == 3
    assert run.summary()["beta"]["failed"] == 0
    assert not run.events("drop", "udp")


SAME_PORT_CLIENT = r"""
import socket, sys
host, port, local = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", local))
s.settimeout(5)
s.sendto(sys.argv[4].encode(), (host, port))
print(s.recvfrom(65536)[0].decode())
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_processes_on_one_udp_port_get_two_flows(backend, udp_echo, rules, wfpr_run):
    """The second process to bind a client port, within the flow lifetime,
    gets a flow and a record of its own (it used to share, or lose, the
    first one's)."""
    host, port = udp_echo
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        local = probe.getsockname()[1]
    script = '"$0" -c "$1" "$2" "$3" "$4" first && "$0" -c "$1" "$2" "$3" "$4" second'
    run = wfpr_run([("alpha", rules("alpha"))], ["sh", "-c", script, PY, SAME_PORT_CLIENT, host, str(port), str(local)],
                   extra=backend)
    needs(backend, run)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["echo:first", "echo:second"]
    connects = run.events("connect", "udp")
    assert len(connects) == 2 and all(e["client"].endswith(":%d" % local) for e in connects), connects
    assert run.summary()["alpha"]["failed"] == 0


def free_port_below_ephemeral():
    """A port free for UDP and TCP on 127.0.0.1 and [::1] (dnsmasq takes all
    four), below the ephemeral range, so that no client's connection takes
    it between this probe and dnsmasq's bind (after a load test, thousands
    of loopback connections hold ephemeral ports)."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    for _ in range(1000):
        port = random.randrange(max(1024, low - 12000), low)
        try:
            for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    with socket.socket(family, kind) as probe:
                        probe.bind((host, port))
            return port
        except OSError:
            continue
    pytest.fail("no free port below the ephemeral range")


@pytest.fixture
def dnsmasq(tmp_path, started):
    """dnsmasq on [::1] and 127.0.0.1, answering example.test with 192.0.2.1."""
    if not shutil.which("dnsmasq") or not shutil.which("dig"):
        pytest.skip("dnsmasq and dig (dnsmasq-base, bind9-dnsutils) are not installed")
    port = free_port_below_ephemeral()
    proc = started(["dnsmasq", "--keep-in-foreground", "--port=%d" % port, "--listen-address=::1",
                    "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
                    "--address=/example.test/192.0.2.1", "--pid-file=%s" % (tmp_path / "pid"),
                    "--log-facility=%s" % (tmp_path / "dnsmasq.log")])
    for _ in range(100):
        direct = subprocess.run(["dig", "@::1", "-p", str(port), "example.test", "+short", "+tries=1", "+time=1"],
                                capture_output=True, text=True)
        if direct.stdout.strip() == "192.0.2.1":
            return port
        time.sleep(0.05)
    log = tmp_path / "dnsmasq.log"
    pytest.fail("dnsmasq (exit status %s) did not answer: %s%s\n%s" % (proc.poll(), direct.stdout, direct.stderr,
                                                                     log.read_text() if log.exists() else ""))


@pytest.mark.parametrize("backend", BACKENDS)
def test_dig_over_ipv6(backend, dnsmasq, rules, wfpr_run):
    """dig @::1 (an IPV6_V6ONLY socket, connected: connect, then send)
    through two proxies: it used to fail with "network unreachable" on the
    preload backend, whose proxies listened on IPv4 only, and went direct on
    the eBPF backend, which did not redirect connected UDP."""
    run = wfpr_run([("alpha", rules("alpha")), ("beta", rules("beta"))],
                   ["dig", "@::1", "-p", str(dnsmasq), "example.test", "+short", "+tries=1", "+time=3"], extra=backend)
    needs(backend, run)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == "192.0.2.1", run.stdout + run.stderr
    connects = run.events("connect", "udp")
    assert [(e["proxy"], e["hops"]) for e in connects] == [("alpha", ["alpha"]), ("beta", ["alpha", "beta"])]
    assert all(e["original_dst"] == "[::1]:%d" % dnsmasq and e["client"].startswith("[::1]:") for e in connects)


DUAL_STACK_CLIENT = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.settimeout(5)
for i in range(3):
    s.sendto(b"dual %d" % i, ("::1", int(sys.argv[1])))
    data, peer = s.recvfrom(100)
    print(data.decode(), "[%s]:%d" % peer[:2])
"""


def test_dual_stack_udp_to_ipv6_loopback(rules, wfpr_run):
    """A dual-stack socket's datagrams to [::1] (the preload backend sent them
    to the proxy's IPv4 address, mapped, and every one was lost)."""
    server = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    server.bind(("::1", 0))
    port = server.getsockname()[1]

    def serve():
        for _ in range(3):
            data, peer = server.recvfrom(100)
            server.sendto(b"echo " + data, peer)
    threading.Thread(target=serve, daemon=True).start()
    run = wfpr_run([("alpha", rules("alpha"))], [PY, "-c", DUAL_STACK_CLIENT, str(port)])
    server.close()
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["echo dual %d [::1]:%d" % (i, port) for i in range(3)]
    assert [e["hops"] for e in run.events("connect", "udp")] == [["alpha"]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_connected_udp_ipv4(backend, dnsmasq, rules, wfpr_run):
    """dig @127.0.0.1 connects its UDP socket: its query and answer go through
    both proxies, and the log names dig as the process."""
    run = wfpr_run([("alpha", rules("alpha")), ("beta", rules("beta"))],
                   ["dig", "@127.0.0.1", "-p", str(dnsmasq), "example.test", "+short", "+tries=1", "+time=3"],
                   extra=backend)
    needs(backend, run)
    assert run.returncode == 0 and run.stdout.strip() == "192.0.2.1", run.stdout + run.stderr
    connects = run.events("connect", "udp")
    assert [(e["proxy"], e["hops"]) for e in connects] == [("alpha", ["alpha"]), ("beta", ["alpha", "beta"])]
    assert all(e["original_dst"] == "127.0.0.1:%d" % dnsmasq for e in connects)
    assert all(e["process"]["name"] == "dig" for e in connects), connects
    assert "went direct" not in run.stderr, run.stderr


BURST_CLIENT = r"""
import hashlib, os, socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.settimeout(5)
sent, got = hashlib.sha256(), hashlib.sha256()
replies = []
# in windows of 32 datagrams: the echo's replies come back to the proxies in bursts
for start in range(0, count, 32):
    window = [os.urandom(1 + (start + i) * 37 % 1400) for i in range(min(32, count - start))]
    for data in window:
        sent.update(b"echo:" + data)
        s.sendto(data, (host, port))
    for _ in window:
        replies.append(s.recvfrom(65536)[0])
for r in replies:
    got.update(r)
print(len(replies), sent.hexdigest() == got.hexdigest())
"""

UPPER_CLIENT = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
for i in range(40):
    s.sendto(b"x%d" % i, (sys.argv[1], int(sys.argv[2])))
    print(s.recvfrom(100)[0].decode())
"""

UPPER_REPLIES = ("function on_connect(flow) return inspect end\n"
                 "function on_datagram(flow, dir, data) if dir == 'down' then return data:upper() end end\n")


@pytest.mark.parametrize("backend", BACKENDS)
def test_burst_of_replies_arrives_intact(backend, udp_echo, rules, wfpr_run):
    """Replies that reach a proxy in bursts (taken several to a system call
    where no rule reads them) all reach the client, intact and in order;
    where an on_datagram rule rewrites them, each is rewritten."""
    host, port = udp_echo
    run = wfpr_run([("alpha", rules("alpha")), ("beta", rules("beta"))], [PY, "-c", BURST_CLIENT, host, str(port),
                                                                          "640"], extra=list(backend))
    needs(backend, run)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["640", "True"], run.stdout
    down = sum(len(b"echo:") + 1 + i * 37 % 1400 for i in range(640))
    assert {e["proxy"]: e["bytes_down"] for e in run.events("close", "udp")} == {"alpha": down, "beta": down}

    upper = wfpr_run([("alpha", rules("alpha", UPPER_REPLIES))], [PY, "-c", UPPER_CLIENT, host, str(port)],
                     extra=list(backend))
    assert upper.returncode == 0, upper.stderr
    assert upper.stdout.split() == ["ECHO:X%d" % i for i in range(40)]


INJECT_CLIENT = r"""
import socket
server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a UDP server in the same program
server.bind(("127.0.0.1", 0))
server.settimeout(5)
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(5)
c.sendto(b"hello", server.getsockname())
data, flow = server.recvfrom(100)  # from the proxy's socket for this flow
server.sendto(b"reply", flow)
print(c.recvfrom(100)[0].decode())
intruder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
intruder.sendto(b"INJECTED", flow)
server.sendto(b"second", flow)
print(c.recvfrom(100)[0].decode())
c.settimeout(0.5)
try:
    print(c.recvfrom(100)[0].decode())
except socket.timeout:
    print("nothing-more")
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_flow_takes_replies_only_from_its_destination(backend, rules, wfpr_run):
    """A proxy's socket for a flow takes datagrams only from where the flow
    goes: another socket that sends to it reaches nobody, where it used to
    reach the client as if from the destination (the intruder here is
    inspected too: its datagram goes through the proxy as a flow of its own,
    and ends at the same socket). A server in the inspected program answers
    straight back to the proxy: a reply is not redirected."""
    run = wfpr_run([("alpha", rules("alpha"))], [PY, "-c", INJECT_CLIENT], extra=list(backend))
    needs(backend, run)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["reply", "second", "nothing-more"], run.stdout


MANY_FLOWS_CLIENT = r"""
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
answered = 0
for round in range(2):
    for i in range(0, n, 32):
        window = socks[i:i + 32]
        for s in window:
            s.settimeout(5)
            s.sendto(b"%d" % round, (host, port))
        for s in window:
            answered += s.recvfrom(100)[0] == b"echo:%d" % round
print(answered)
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_flows_stay_their_own(backend, udp_echo, rules, wfpr_run):
    """5,000 sockets, each a flow: each one's second datagram goes on in its
    flow. On eBPF the kernel kept 4,096 flows, and past that a datagram
    started a new flow, with a fresh record, nearly every time."""
    host, port = udp_echo
    run = wfpr_run([("alpha", rules("alpha"))], [PY, "-c", MANY_FLOWS_CLIENT, host, str(port), "5000"],
                   extra=list(backend))
    needs(backend, run)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["10000"]
    assert run.summary()["alpha"]["flows"] == 5000, run.stderr[-3000:]
