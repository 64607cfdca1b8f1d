"""Real programs through `wfpr run`: curl, Python's urllib and sockets, to real
servers on loopback. Everything here runs the built CLI (build/wfpr) and the
shim (build/libwfpr-preload.so)."""
import hashlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WFPR = os.environ.get("WFPR_BIN", os.path.join(ROOT, "build", "wfpr"))
SHIM = os.path.join(os.path.dirname(WFPR), "libwfpr-preload.so")

if not os.path.exists(WFPR):
    pytest.exit("build/wfpr is missing: run `make build` first", returncode=2)

PASS_RULE = "function on_connect(conn) return pass end\n"
INSPECT_RULE = "function on_connect(conn) return inspect end\nfunction on_data(conn, dir, chunk) return nil end\n"


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def www(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    (root / "small.bin").write_bytes(os.urandom(256 << 10))
    with open(root / "big.bin", "wb") as f:  # 100 MiB
        for _ in range(100):
            f.write(os.urandom(1 << 20))
    return root


@pytest.fixture(scope="session")
def http_server(www):
    """http.server on 127.0.0.1 and [::1], outside the proxies."""
    servers = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        cls = type("Server", (http.server.ThreadingHTTPServer,), {"address_family": family, "daemon_threads": True})
        server = cls((host, 0), lambda *a: Quiet(*a, directory=str(www)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield {"v4": "http://127.0.0.1:%d" % servers[0].server_address[1],
           "v6": "http://[::1]:%d" % servers[1].server_address[1], "root": www}
    for s in servers:
        s.shutdown()


@pytest.fixture
def rules(tmp_path):
    """rules(name, text) writes a rules file and returns its path."""
    def write(name, text=PASS_RULE):
        path = tmp_path / (name + ".lua")
        path.write_text(text)
        return str(path)
    return write


class Run:
    def __init__(self, proc, log_path):
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.log = []
        if os.path.exists(log_path):
            with open(log_path) as f:
                self.log = [json.loads(line) for line in f]

    def events(self, event, proto="tcp"):
        """The log's lines of one event and protocol ("connect", "close", ...)."""
        return [e for e in self.log if e["event"] == event and e["proto"] == proto]

    def summary(self):
        """The per-proxy table wfpr run prints, as {name: {column: int}}."""
        lines = self.stderr.splitlines()
        header = [i for i, line in enumerate(lines) if line.startswith("proxy ")][-1]
        rows = {}
        for line in lines[header + 1:]:
            cols = line.split()
            if len(cols) == 10:
                rows[cols[0]] = dict(zip(["connections", "pass", "inspect", "block", "failed", "flows",
                                          "bytes_up", "bytes_down", "rule_errors"], map(int, cols[1:])))
        return rows


@pytest.fixture
def wfpr_run(tmp_path):
    """wfpr_run([(name, rules_path), ...], command, ...) -> Run"""
    def run(proxies, command, timeout=120, extra=(), env=None, prefix=()):
        log = str(tmp_path / "log.jsonl")
        args = [*prefix, WFPR, "run", "--rules", proxies[0][1]]
        if proxies[0][0] != os.path.splitext(os.path.basename(proxies[0][1]))[0]:
            raise ValueError("the first proxy is named after its rules file")
        for name, path in proxies[1:]:
            args += ["--proxy", "%s=%s" % (name, path)]
        args += ["--log", log, *extra, "--", *command]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, **(env or {})))
        return Run(proc, log)
    return run


class Started:
    """Background processes of one test. Each runs in a session of its own,
    so that teardown can kill it with everything it started, even when the
    test failed half-way; `wfpr ebpf cleanup` then removes what a killed
    eBPF run left loaded."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.procs = []

    def __call__(self, args, ready=False, timeout=30, **kwargs):
        """Popen(args); with ready=True, return only once `wfpr run` said
        READY=1 on NOTIFY_SOCKET (its programs attached, its proxies
        listening and COMMAND running), as systemd's Type=notify waits."""
        env = dict(kwargs.pop("env", None) or os.environ)
        notify = None
        if ready:
            notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            path = str(self.tmp_path / ("notify-%d" % len(self.procs)))
            notify.bind(path)
            env["NOTIFY_SOCKET"] = path
        proc = subprocess.Popen(args, env=env, start_new_session=True, **kwargs)
        self.procs.append(proc)
        if notify:
            with notify:
                notify.settimeout(timeout)
                deadline = time.time() + timeout
                while True:
                    assert proc.poll() is None, "%s exited (%s) before it was ready" % (args[:2], proc.returncode)
                    try:
                        if b"READY=1" in notify.recv(4096).split(b"\n"):
                            break
                    except socket.timeout:
                        pass
                    assert time.time() < deadline, "%s was not ready after %d s" % (args[:2], timeout)
        return proc

    def cleanup(self):
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        if self.procs and os.path.exists(WFPR):
            subprocess.run([WFPR, "ebpf", "cleanup"], capture_output=True)


@pytest.fixture
def started(tmp_path):
    """started(args, ready=False, **popen_kwargs) -> Popen, killed at teardown."""
    s = Started(tmp_path)
    yield s
    s.cleanup()


def assert_chain(run, names, connections):
    """Each connection visited every proxy exactly once, in order, and no loop:
    proxy i's connect events carry the hops names[:i+1]."""
    connects = run.events("connect")
    for i, name in enumerate(names):
        mine = [e for e in connects if e["proxy"] == name]
        assert len(mine) == connections, (name, mine)
        for e in mine:
            assert e["hops"] == names[: i + 1], e
            assert e["state"] == "REDIRECTED_BY_SELF"
            assert len(set(e["hops"])) == len(e["hops"])  # no redirector twice: no loop
    assert len(connects) == connections * len(names)


PY = sys.executable
