"""Faults: in each case the client sees an error or a reset, never a hang,
and the other connections go on."""
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from itsupport import PY, SHIM, WFPR, sha256_file


class StreamServer:
    """Sends `size` bytes to each connection (endless when None), slowly
    enough that a transfer is still going when a test breaks it."""

    def __init__(self, size=None, close_after=None, header=b""):
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.sock.getsockname()[1]
        self.size, self.close_after, self.header = size, close_after, header
        self.errors = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            threading.Thread(target=self.send, args=(conn,), daemon=True).start()

    def send(self, conn):
        sent = 0
        chunk = os.urandom(64 << 10)
        try:
            conn.recv(65536)  # the request, if any
            conn.sendall(self.header)
            while not self.stop.is_set() and (self.size is None or sent < self.size):
                if self.close_after is not None and sent >= self.close_after:
                    break
                conn.sendall(chunk)
                sent += len(chunk)
                time.sleep(0.002)
        except OSError as e:
            self.errors.append(e)
        finally:
            conn.close()

    def close(self):
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def stream():
    servers = []

    def make(**kw):
        servers.append(StreamServer(**kw))
        return servers[-1]
    yield make
    for s in servers:
        s.close()


def test_client_resets_mid_stream(stream, http_server, rules, wfpr_run):
    server = stream()
    script = (
        "import socket, struct, sys, urllib.request, hashlib\n"
        "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
        "s.sendall(b'go')\n"
        "got = 0\n"
        "while got < 1 << 20:\n"
        "    got += len(s.recv(65536))\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n"
        "s.close()\n"
        "print(hashlib.sha256(urllib.request.urlopen(sys.argv[2]).read()).hexdigest())\n")
    run = wfpr_run([("alpha", rules("alpha")), ("beta", rules("beta"))],
                   [PY, "-c", script, str(server.port), http_server["v4"] + "/small.bin"], timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == sha256_file(http_server["root"] / "small.bin")  # the next connection went on
    errors = [e for e in run.events("error") if e["original_dst"].endswith(":%d" % server.port)]
    assert {e["proxy"] for e in errors} == {"alpha", "beta"}  # the reset went down the chain
    deadline = time.time() + 10
    while not server.errors and time.time() < deadline:
        time.sleep(0.05)
    assert server.errors, "the server never saw the reset"


def test_server_refuses(rules, wfpr_run):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    # (on a loaded machine the reset can come before the client's connect has
    # returned: it is the same answer, a reset)
    script = (
        "import socket, sys\n"
        "try:\n"
        "    s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=10)\n"
        "    print('eof' if s.recv(1) == b'' else 'data')\n"
        "except ConnectionResetError:\n"
        "    print('reset')\n")
    start = time.monotonic()
    run = wfpr_run([("alpha", rules("alpha")), ("beta", rules("beta"))], [PY, "-c", script, str(port)], timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "reset"
    assert time.monotonic() - start < 20
    assert any(e["proxy"] == "beta" and "REFUSED" in (e["error"] or "") for e in run.events("error")), [(e["proxy"], e["event"], e["error"]) for e in run.log]


def test_server_closes_early(stream, rules, wfpr_run):
    server = stream(close_after=256 << 10,
                    header=b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\nConnection: close\r\n\r\n")
    run = wfpr_run([("alpha", rules("alpha")), ("beta", rules("beta"))],
                   ["curl", "-sS", "-o", "/dev/null", "--max-time", "30", "http://127.0.0.1:%d/" % server.port])
    assert run.returncode == 18, run.stderr  # curl: partial file, not a timeout (28)
    closes = [e for e in run.events("close") if e["proxy"] == "beta"]
    assert closes and closes[0]["bytes_down"] >= 256 << 10


def start(args, env=None, ready=None):
    """A process whose stderr says `ready` when it is up."""
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
    if ready:
        line = proc.stderr.readline()
        assert ready in line, line
    return proc


@pytest.fixture
def preload(tmp_path):
    """A broker and proxies started by hand, as `wfpr broker` and `wfpr proxy`."""
    procs = {}
    path = str(tmp_path / "broker.sock")
    log = str(tmp_path / "log.jsonl")
    procs["broker"] = start([WFPR, "broker", "--socket", path], ready="listening")
    time.sleep(0.1)

    def proxy(name, rules_path):
        procs[name] = start([WFPR, "proxy", "--broker", path, "--name", name, "--rules", rules_path, "--log", log],
                            ready="listening")
        return procs[name]

    def env(**kw):
        return dict(os.environ, LD_PRELOAD=SHIM, WFPR_BROKER=path, **kw)
    yield {"path": path, "proxy": proxy, "env": env, "procs": procs, "log": log}
    for p in procs.values():
        if p.poll() is None:
            p.kill()
        p.wait()


def test_broker_killed(stream, http_server, rules, preload):
    """Relays already running go on; new connects fail open (straight to the
    server) or, with WFPR_FAIL=closed, fail at once with ENETDOWN."""
    server = stream()
    preload["proxy"]("alpha", rules("alpha"))
    script = (
        "import socket, sys, errno\n"
        "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
        "s.sendall(b'go')\n"
        "got = 0\n"
        "while got < 1 << 20:\n"
        "    got += len(s.recv(65536))\n"
        "print('streaming', flush=True)\n"
        "sys.stdin.readline()\n"  # the test kills the broker here
        "while got < 4 << 20:\n"
        "    got += len(s.recv(65536))\n"
        "print('still streaming')\n"
        "try:\n"
        "    t = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=10)\n"
        "    print('new connection to', '%s:%d' % t.getpeername())\n"
        "except OSError as e:\n"
        "    print('new connection failed', errno.errorcode[e.errno])\n")
    for mode, expect in (("open", "new connection to 127.0.0.1:%d" % server.port),
                         ("closed", "new connection failed ENETDOWN")):
        if preload["procs"]["broker"].poll() is not None:  # second round: a broker again, then kill it
            preload["procs"]["broker"] = start([WFPR, "broker", "--socket", preload["path"]], ready="listening")
            preload["procs"]["alpha"].kill()
            preload["proxy"]("alpha", rules("alpha"))
        client = subprocess.Popen([PY, "-c", script, str(server.port)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=preload["env"](WFPR_FAIL=mode))
        assert client.stdout.readline().strip() == "streaming"
        preload["procs"]["broker"].send_signal(signal.SIGKILL)
        preload["procs"]["broker"].wait()
        out, _ = client.communicate("go\n", timeout=30)
        assert client.returncode == 0
        assert out.splitlines() == ["still streaming", expect]


def test_proxy_killed_mid_transfer(http_server, rules, preload, tmp_path):
    """The client sees an error at once; the chain closes over the dead proxy
    and the next connection goes through the proxy that is left."""
    preload["proxy"]("alpha", rules("alpha"))
    beta = preload["proxy"]("beta", rules("beta"))
    env = preload["env"]()
    client = subprocess.Popen(["curl", "-sS", "--limit-rate", "5M", "-o", "/dev/null", http_server["v4"] + "/big.bin"],
                              stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(1.0)
    beta.kill()
    beta.wait()
    _, err = client.communicate(timeout=30)
    assert client.returncode != 0, "the transfer cannot have finished through a dead proxy"
    out = tmp_path / "got.bin"
    again = subprocess.run(["curl", "-sS", "--fail", "-o", str(out), http_server["v4"] + "/small.bin"],
                           capture_output=True, text=True, env=env, timeout=30)
    assert again.returncode == 0, again.stderr
    assert sha256_file(out) == sha256_file(http_server["root"] / "small.bin")
    with open(preload["log"]) as f:
        last = [json.loads(line) for line in f if '"connect"' in line][-1]
    assert last["proxy"] == "alpha" and last["hops"] == ["alpha"]


def test_idle_timeout_resets(rules, wfpr_run):
    """--idle-timeout: a relayed connection with no traffic is reset; a busy one is not."""
    quiet = socket.create_server(("127.0.0.1", 0))
    held = []
    stop = threading.Event()

    def accept_and_hold():
        quiet.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(quiet.accept()[0])
            except socket.timeout:
                continue
    t = threading.Thread(target=accept_and_hold, daemon=True)
    t.start()
    script = (
        "import socket, sys, time\n"
        "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
        "start = time.monotonic()\n"
        "s.settimeout(20)\n"
        "try:\n"
        "    end = 'eof' if s.recv(1) == b'' else 'data'\n"
        "except ConnectionResetError:\n"
        "    end = 'reset'\n"
        "print(end, round(time.monotonic() - start, 1))\n")
    try:
        run = wfpr_run([("alpha", rules("alpha"))], [PY, "-c", script, str(quiet.getsockname()[1])],
                       extra=["--idle-timeout", "500"], timeout=60)
    finally:
        stop.set()
        t.join()
        for h in held:
            h.close()
        quiet.close()
    assert run.returncode == 0, run.stderr
    end, seconds = run.stdout.split()
    assert end in ("reset", "eof") and 0.4 <= float(seconds) < 10
    assert [e["error"] for e in run.events("error")] == ["idle timeout"]


AT_THE_FD_LIMIT = r"""
import os, socket, subprocess, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
proxy = int(subprocess.run(["pgrep", "-P", str(os.getppid()), "-x", "wfpr"], capture_output=True, text=True).stdout.split()[0])

def cpu_seconds(pid):
    fields = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

socks = [socket.create_connection((host, port)) for _ in range(n)]  # more than the proxy can hold
before = cpu_seconds(proxy)
time.sleep(2)
print("idle cpu %.2f" % (cpu_seconds(proxy) - before))
for s in socks:
    s.sendall(b"GET /small.bin HTTP/1.0\r\n\r\n")
got = []
for s in socks:
    total = 0
    while True:
        b = s.recv(65536)
        if not b:
            break
        total += len(b)
    got.append(total)
    s.close()
print("complete %d" % sum(t > 256 << 10 for t in got))
"""


def test_at_the_fd_limit_the_proxy_sheds_load_instead_of_spinning(http_server, rules, wfpr_run):
    """With a proxy at its descriptor limit (prlimit: 64, room for about 20
    connections), the rest of 40 wait in the backlog: the proxy does not spin
    at 100% CPU on a listener it cannot accept from (it used to), never
    accepts one it cannot relay (it used to reset them), says so in the log,
    and serves them all as earlier ones close. One worker: its backlog is
    served in the order the client connected, the order it reads in (with a
    worker per CPU, each has a backlog of its own, and this client could wait
    on one while the other holds the descriptors; README.md, --workers)."""
    if not shutil.which("prlimit"):
        pytest.skip("prlimit (util-linux) is not installed")
    host, port = http_server["v4"][len("http://"):].split(":")
    run = wfpr_run([("alpha", rules("alpha"))], [PY, "-c", AT_THE_FD_LIMIT, host, port, "40"],
                   prefix=["prlimit", "--nofile=64:64"], extra=["--workers", "1"])
    assert run.returncode == 0, run.stderr
    idle, complete = run.stdout.split("\n")[:2]
    assert float(idle.split()[-1]) < 0.5, run.stdout  # a spinning proxy burns about 2 s of CPU here
    assert complete == "complete 40", run.stdout + run.stderr
    assert run.summary()["alpha"]["failed"] == 0  # none accepted that could not be relayed
    shed = [e for e in run.log if e["event"] == "shed"]
    assert shed and "Too many open files" in shed[0]["error"], run.log[-3:]


SEQUENTIAL = r"""
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
done = 0
for _ in range(n):
    s = socket.create_connection((host, port))
    s.sendall(b"GET /small.bin HTTP/1.0\r\n\r\n")
    total = 0
    while True:
        b = s.recv(65536)
        if not b:
            break
        total += len(b)
    s.close()
    done += total > 256 << 10
print(done)
"""


def test_a_log_reader_that_stops_never_stalls_the_relay(http_server, rules, tmp_path):
    """--log to a FIFO whose reader never reads: the relay goes on (it used
    to block after 128 requests); the lines a reader cannot take are dropped,
    counted, and said on stderr."""
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # open, never read
    try:
        host, port = http_server["v4"][len("http://"):].split(":")
        run = subprocess.run([WFPR, "run", "--rules", rules("alpha"), "--log", str(fifo), "--", PY, "-c", SEQUENTIAL,
                              host, port, "400"], capture_output=True, text=True, timeout=120)
    finally:
        os.close(reader)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "400"
    assert "log line(s) dropped" in run.stderr, run.stderr


STALL_RULE = 'function on_connect(conn) string.find(string.rep("a", 100000), ".-.-.-.-.-.-.-b") return pass end\n'


def test_killed_run_takes_its_stuck_proxies_and_broker_along(http_server, rules, started):
    """SIGKILL of wfpr run: its proxies and broker end too, even a proxy stuck
    inside a rule (one used to keep 95% CPU for minutes)."""
    proc = started([WFPR, "run", "--rules", rules("stuck", STALL_RULE), "--", "curl", "-s", "--max-time", "30",
                    "-o", "/dev/null", http_server["v4"] + "/small.bin"], ready=True, stderr=subprocess.DEVNULL)
    children = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                               text=True).stdout.split()]
    assert len(children) == 3, children  # the broker, the proxy and curl
    time.sleep(1)  # curl's connection is in the rule now, which never returns
    proc.kill()
    proc.wait()
    def alive():
        """The wfpr children still running (not gone, not zombies)."""
        running = []
        for pid in children:
            try:
                with open("/proc/%d/stat" % pid) as f:
                    name, rest = f.read().rsplit(")", 1)
            except FileNotFoundError:
                continue
            if name.endswith("(wfpr") and rest.split()[0] != "Z":
                running.append(pid)
        return running

    deadline = time.time() + 5
    while alive() and time.time() < deadline:
        time.sleep(0.05)
    assert alive() == [], "still running after wfpr run was killed"


GROW_RULE = ('function on_connect(conn) return inspect end\n'
             'function on_data(conn, dir, chunk)\n'
             '  if dir == "up" and not conn.tag.grown then conn.tag.grown = true return string.rep("x", 6 << 20) end\n'
             'end\n')

HOLD_CLIENT = r"""
import os, socket, subprocess, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
proxy = int(subprocess.run(["pgrep", "-P", str(os.getppid()), "-x", "wfpr"], capture_output=True, text=True).stdout.split()[-1])
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"grow")
    socks.append(s)
time.sleep(float(sys.argv[3]))  # the server has read every replacement by now; the connections stay open
rss = [line for line in open("/proc/%d/status" % proxy) if line.startswith("VmRSS:")][0].split()[1]
print(int(rss) // 1024)
for s in socks:
    s.close()
"""


def test_buffers_shrink_after_a_long_replacement(rules, wfpr_run):
    """A 6 MiB replacement grows a connection's buffer; once sent, the buffer
    goes back to its normal size: 40 open connections that each had one
    stay small (they used to hold about 6 MiB each, 631 MB for 100)."""
    received = []
    server = socket.create_server(("127.0.0.1", 0))

    def sink(conn):
        total = 0
        while True:
            b = conn.recv(1 << 20)
            if not b:
                break
            total += len(b)
        received.append(total)
        conn.close()

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=sink, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    run = wfpr_run([("grow", rules("grow", GROW_RULE))], [PY, "-c", HOLD_CLIENT, str(server.getsockname()[1]), "40", "4"])
    server.close()
    assert run.returncode == 0, run.stderr
    assert sorted(received) == [6 << 20] * 40, received
    assert int(run.stdout) < 120, "the proxy holds %s MiB" % run.stdout  # 190 with the buffers shrunk but no trim, 255 before


@pytest.mark.skipif(os.geteuid() != 0, reason="a tmpfs of its own needs root (unshare -m)")
def test_a_full_disk_leaves_whole_lines_and_a_warning(http_server, rules, tmp_path):
    """--log on a filesystem that fills up (a 16 KiB tmpfs): the relay goes on,
    the log keeps only whole JSON lines (it used to end in a cut one), and
    stderr says how many were dropped."""
    disk = tmp_path / "disk"
    disk.mkdir()
    host, port = http_server["v4"][len("http://"):].split(":")
    script = ('mount -t tmpfs -o size=16k tmpfs "$0" && "$1" run --rules "$2" --log "$0/log" -- "$3" -c "$4" "$5" "$6" 200;'
              ' rc=$?; cp "$0/log" "$0.copy"; exit $rc')
    run = subprocess.run(["unshare", "-m", "sh", "-c", script, str(disk), WFPR, rules("alpha"), PY, SEQUENTIAL, host,
                          port], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "200"
    lines = (tmp_path / "disk.copy").read_text().splitlines()
    assert 10 < len(lines) < 400 and all(json.loads(line)["proxy"] == "alpha" for line in lines)
    assert "the disk may be full" in run.stderr and "log line(s) dropped" in run.stderr, run.stderr
