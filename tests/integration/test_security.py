"""Attackers. Against the eBPF backend: a second, unprivileged local user who
binds the port of a proxy that died, to receive the inspected program's
connections. The kernel must never send a connection to a port that wfpr
does not hold: with --fail-closed the connect is refused, otherwise it goes
on without that proxy (here: direct). Against the preload backend: the
inspected program itself, which tries to become a proxy (and so to make its
own traffic uninspected) or to read the broker's key."""
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from itsupport import PASS_RULE, WFPR, sha256_file
from test_daemon import Layer, ebpf_ok  # noqa: F401 - fixture

ATTACKER = "wfpr-attacker"
EVIL = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(8)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    print("GOT A CONNECTION", flush=True)
    c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nEVIL")
    c.close()
"""


@pytest.fixture(scope="module")
def attacker():
    if os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("useradd"):
        pytest.skip("needs root, setpriv and useradd to act as a second user")
    if subprocess.run(["id", ATTACKER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", ATTACKER],
                       check=True)
    return ["setpriv", "--reuid", ATTACKER, "--regid", ATTACKER, "--clear-groups", "--"]


def status():
    return subprocess.run([WFPR, "ebpf", "status"], capture_output=True, text=True).stdout


@pytest.mark.parametrize("how", ["proxy-killed-fail-closed", "loader-killed"])
def test_dead_proxy_port_cannot_be_taken_over(how, attacker, http_server, tmp_path, started):
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    out = tmp_path / "got.bin"
    rule = tmp_path / "alpha.lua"
    rule.write_text(PASS_RULE)
    command = ["sh", "-c", 'read line < "$0"; exec curl -sS -o "$1" "$2"', str(fifo), str(out),
               http_server["v4"] + "/small.bin"]
    extra = ["--fail-closed"] if how.endswith("fail-closed") else []
    run = started([WFPR, "run", "--backend", "ebpf", "--rules", str(rule), *extra, "--", *command], ready=True,
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    found = re.search(r"proxy pid (\d+) at 127\.0\.0\.1:(\d+)", status())
    if not found:
        pytest.skip("the eBPF backend is not available here")
    proxy_pid, port = int(found.group(1)), int(found.group(2))
    if how == "loader-killed":
        os.kill(run.pid, signal.SIGKILL)  # the proxy follows (PDEATHSIG); the programs stay pinned
        run.wait()
    else:
        os.kill(proxy_pid, signal.SIGKILL)
    for _ in range(100):
        if not os.path.exists("/proc/%d" % proxy_pid):
            break
        time.sleep(0.05)
    evil = started([*attacker, "/usr/bin/python3", "-c", EVIL, str(port)], stdout=subprocess.PIPE, text=True)
    assert evil.stdout.readline().strip() == "listening"  # the port is free, and the attacker has it
    with open(fifo, "w") as f:  # the inspected program (COMMAND, still in the cgroup) connects now
        f.write("go\n")
    if how == "loader-killed":
        # fail-open: the connection goes on without the dead proxy, to the real server
        deadline = time.time() + 30
        while time.time() < deadline and not (out.exists() and out.stat().st_size >= 256 << 10):
            time.sleep(0.05)
        assert sha256_file(out) == sha256_file(http_server["root"] / "small.bin")
    else:
        run.wait(timeout=30)
        err = run.stderr.read()
        assert run.returncode == 7 and "Couldn't connect" in err, err  # curl: the kernel refused the connect
        assert "its connections are refused" in err, err
        assert not out.exists()
    evil.send_signal(signal.SIGKILL)
    assert "GOT A CONNECTION" not in evil.stdout.read(), "the attacker received the inspected program's connection"


def test_daemon_fail_closed_refuses_once_the_proxy_is_gone(attacker, ebpf_ok, http_server, tmp_path, started):
    """The same against `wfpr daemon --fail-closed`: the killed proxy's port,
    taken by the attacker, never gets a connection; the connect is refused
    until a proxy of that name registers again."""
    layer = Layer(tmp_path, started, daemon_options=["--fail-closed"])
    try:
        proxy = layer.proxy("guard")
        port = int(re.search(r"at 127\.0\.0\.1:(\d+)", layer.daemon_said()).group(1))
        os.kill(proxy.pid, signal.SIGKILL)
        proxy.wait()
        evil = started([*attacker, "/usr/bin/python3", "-c", EVIL, str(port)], stdout=subprocess.PIPE, text=True)
        assert evil.stdout.readline().strip() == "listening"
        got = layer.run(["curl", "-sS", "-o", str(tmp_path / "x"), http_server["v4"] + "/small.bin"])
        assert got.returncode == 7, got.stderr
        assert "refused until it is back" in layer.daemon_said()
        layer.proxy("guard")  # back: connections flow again
        got = layer.run(["curl", "-sS", "-o", str(tmp_path / "y"), http_server["v4"] + "/small.bin"])
        assert got.returncode == 0 and sha256_file(tmp_path / "y") == sha256_file(http_server["root"] / "small.bin")
        evil.send_signal(signal.SIGKILL)
        assert "GOT A CONNECTION" not in evil.stdout.read()
    finally:
        layer.close()


HOSTILE = r"""
import os, re, subprocess, sys
wfpr, broker = sys.argv[1], os.environ["WFPR_BROKER"]
# 1. register as a proxy, as `wfpr proxy` would, from inside the inspected program
r = subprocess.run([wfpr, "proxy", "--broker", broker, "--name", "evil"], capture_output=True, text=True, timeout=20)
print("register:", r.returncode, r.stderr.strip())
# 2. find the key: the environment, the broker's directory, the memory of wfpr run, the broker and the proxies
print("key in environment:", any(re.fullmatch(r"[0-9a-f]{64}", v) for v in os.environ.values()))
print("files:", sorted(os.listdir(os.path.dirname(broker))))
ppid = os.getppid()
others = [ppid] + [int(p) for t in os.listdir("/proc/%d/task" % ppid)
                   for p in open("/proc/%d/task/%s/children" % (ppid, t)).read().split() if int(p) != os.getpid()]
for pid in others:
    for what in ("mem", "environ"):
        try:
            open("/proc/%d/%s" % (pid, what), "rb").read(1)
            print("READ", what, "of", pid)
        except OSError as e:
            print("refused", what, e.errno)
"""


def test_inspected_program_cannot_become_a_proxy(attacker, tmp_path):
    """wfpr run (preload) as an unprivileged user; its COMMAND, of the same
    user, tries to register as a proxy and to find the broker's key: in its
    environment, in the broker's directory, and in the memory of wfpr run,
    the broker and the proxies. All of it fails."""
    if subprocess.run([*attacker, "test", "-x", WFPR], capture_output=True).returncode != 0:
        pytest.skip("the second user cannot run %s (a checkout it cannot read)" % WFPR)
    shared = tempfile.mkdtemp(prefix="wfpr-hostile-")
    try:
        user = pwd.getpwnam(ATTACKER)
        os.chown(shared, user.pw_uid, user.pw_gid)
        rule = os.path.join(shared, "pass.lua")
        with open(rule, "w") as f:
            f.write(PASS_RULE)
        os.chmod(rule, 0o644)
        r = subprocess.run([*attacker, "env", "TMPDIR=" + shared, WFPR, "run", "--rules", rule, "--",
                            "/usr/bin/python3", "-c", HOSTILE, WFPR], capture_output=True, text=True, timeout=60)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    out = r.stdout
    assert r.returncode == 0, (out, r.stderr)
    assert "register: 1" in out and "refused the registration key" in out, out
    assert "key in environment: False" in out, out
    assert "files: ['broker.sock']" in out, out  # no key file: wfpr run hands the key over in memory
    assert "READ" not in out, out
    assert out.count("refused mem 13") == 3 and out.count("refused environ 13") == 3, out  # run, broker, proxy
