"""Live reload: SIGHUP makes `wfpr proxy` load its rules file again. New
connections get the new rules; a connection that was running keeps the
rules it started with (its conn.tag too) to its end, and loses no byte; a
file that does not load leaves the old rules in place, and says why."""
import os
import signal
import socket
import subprocess
import threading
import time

from itsupport import PY, SHIM, WFPR, sha256_file  # noqa: F401

V1 = """
function on_connect(conn) conn.tag.version = "v1" return inspect end
function on_data(conn, dir, chunk)
  if chunk:find("WHO", 1, true) then return chunk:gsub("WHO", conn.tag.version) end
end
"""
V2 = """
function on_connect(conn) conn.tag.version = "v2" return inspect end
function on_data(conn, dir, chunk)
  if chunk:find("WHO", 1, true) then return chunk:gsub("WHO", conn.tag.version) end
  if chunk:find("FORBIDDEN", 1, true) then return close, "v2 forbids it" end
end
"""

CLIENT = r"""
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
for line in sys.stdin:
    try:
        s.sendall(line.encode())
        print(s.recv(100).decode().strip() or "closed", flush=True)
    except OSError:
        print("closed", flush=True)
"""


def echo_server():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)

    def serve(c):
        try:
            while True:
                data = c.recv(100)
                if not data:
                    break
                c.sendall(data)
        except OSError:
            pass  # the proxy closed it (v2's rule)
        c.close()

    def accept():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return srv


def wait_for(path, text, proc, timeout=30):
    deadline = time.time() + timeout
    while text not in open(path).read():
        assert proc.poll() is None and time.time() < deadline, open(path).read()
        time.sleep(0.05)


def test_sighup_reloads_rules(tmp_path, started):
    sock = str(tmp_path / "broker.sock")
    started([WFPR, "broker", "--socket", sock], stderr=subprocess.DEVNULL)
    for _ in range(200):
        if os.path.exists(sock + ".key"):
            break
        time.sleep(0.02)
    rules = tmp_path / "r.lua"
    rules.write_text(V1)
    err = tmp_path / "proxy.err"
    log = tmp_path / "log.jsonl"
    proxy = started([WFPR, "proxy", "--broker", sock, "--name", "live", "--rules", str(rules), "--log", str(log),
                     "--workers", "2"], ready=True, stderr=open(err, "w"))
    srv = echo_server()
    port = str(srv.getsockname()[1])
    env = dict(os.environ, LD_PRELOAD=SHIM, WFPR_BROKER=sock)

    def client():
        return subprocess.Popen([PY, "-c", CLIENT, port], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env=env)

    def say(c, line):
        c.stdin.write(line + "\n")
        c.stdin.flush()
        return c.stdout.readline().strip()

    old = client()
    assert say(old, "WHO am I") == "v1 am I"

    rules.write_text(V2)
    proxy.send_signal(signal.SIGHUP)
    wait_for(err, "are loaded again (reload 1)", proxy)
    new = client()
    assert say(new, "WHO am I") == "v2 am I"
    assert say(old, "WHO am I still") == "v1 am I still"  # the running one keeps v1, and its conn.tag
    assert say(old, "FORBIDDEN in v2 only") == "FORBIDDEN in v2 only"  # v1 has no such rule
    assert say(new, "FORBIDDEN") == "closed"

    rules.write_text("function on_connect(conn) return inspect end\nthis is not Lua\n")
    proxy.send_signal(signal.SIGHUP)
    wait_for(err, "do not load, the old rules stay", proxy)
    third = client()
    assert say(third, "WHO now") == "v2 now"  # v2 stays
    for c in (old, new, third):
        c.stdin.close()
        c.wait(timeout=10)
    proxy.send_signal(signal.SIGTERM)
    proxy.wait(timeout=30)
    srv.close()
    verdicts = [line for line in open(log) if '"event":"verdict"' in line and '"verdict":"close"' in line]
    assert len(verdicts) == 1 and '"reason":"v2 forbids it"' in verdicts[0], verdicts
    assert proxy.returncode == 0
