"""Soak: real clients through two cooperating proxies for a long while.

    python3 tests/soak/soak.py --minutes 30 --backend preload   # make soak runs both backends
    python3 tests/soak/soak.py --minutes 1 --backend ebpf       # as root

Servers on loopback (nginx, redis-server, dnsmasq), two proxies (alpha: pass,
beta: inspect every chunk), and rounds of load until the time is up:
ab and wrk with and without keep-alive, redis-benchmark -k 0, dnsperf over
UDP, and curl bulk downloads whose bytes are hashed at both ends. On the
preload backend the broker and proxies run on their own (`wfpr broker`,
`wfpr proxy`) and beta is restarted between two rounds half-way through; on
the eBPF backend the load runs as COMMAND of `wfpr run --backend ebpf` (a
proxy cannot be restarted there until proxies can register with a daemon).

Every `--sample` seconds it records the resident memory and open
descriptors of each wfpr process. It prints a table, writes a JSON report
(--report), and exits 1 if any request failed, any byte was lost, or a
process's memory or descriptors did not end flat: within 10% of the value
after warm-up (the first sample after a minute, or after half the run when
it is shorter, and never before the end of the first round of every load
that the process served whole: a proxy's buffers reach their size with its
first bulk transfer), plus 2 MiB or 8 descriptors of slack. A restarted
process is a series of its own.
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WFPR = Path(os.environ.get("WFPR_BIN", ROOT / "build" / "wfpr"))
SHIM = WFPR.parent / "libwfpr-preload.so"

PASS_RULE = "function on_connect(conn) return pass end\n"
INSPECT_RULE = "function on_connect(conn) return inspect end\nfunction on_data(conn, dir, chunk) return nil end\n"
BULK_MIB = 20


def free_port():
    """A loopback port free for both TCP and UDP (dnsmasq takes both)."""
    while True:
        with socket.socket() as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            try:
                u.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nothing listens on port %d" % port)


class Servers:
    """nginx (a small page and a bulk file), redis-server and dnsmasq, on loopback."""

    def __init__(self, work):
        self.work = work
        self.procs = []
        www = work / "www"
        www.mkdir()
        (www / "small.html").write_bytes(b"x" * 100)
        with open(www / "bulk.bin", "wb") as f:
            for _ in range(BULK_MIB):
                f.write(os.urandom(1 << 20))
        self.bulk_sha = hashlib.sha256((www / "bulk.bin").read_bytes()).hexdigest()
        self.http = free_port()
        (work / "nginx.conf").write_text(
            "daemon off; worker_processes 1; pid %s/nginx.pid; error_log %s/nginx.err;\n"
            "events { worker_connections 4096; }\n"
            "http { access_log off; keepalive_requests 100000;\n"
            "  server { listen 127.0.0.1:%d; root %s; } }\n" % (work, work, self.http, www))
        self.start(["nginx", "-c", str(work / "nginx.conf")])
        self.redis = free_port()
        self.start(["redis-server", "--port", str(self.redis), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                    "--dir", str(work)])
        self.dns = free_port()
        self.start(["dnsmasq", "--keep-in-foreground", "--port=%d" % self.dns, "--listen-address=127.0.0.1",
                    "--bind-interfaces", "--no-resolv", "--no-hosts", "--address=/example.test/192.0.2.1",
                    "--pid-file=%s" % (work / "dnsmasq.pid"), "--log-facility=%s" % (work / "dnsmasq.log")])
        (work / "queries").write_text("example.test A\nwww.example.test A\n")
        wait_port(self.http)
        wait_port(self.redis)
        wait_port(self.dns)  # dnsmasq answers on TCP too

    def start(self, args):
        self.procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                           start_new_session=True))

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait(timeout=10)


# ---- the load ----------------------------------------------------------------

def run_tool(args, env, timeout=300):
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def ab(s, env, keepalive):
    rc, out = run_tool(["ab", *(["-k"] if keepalive else []), "-n", "3000", "-c", "8", "-q",
                        "http://127.0.0.1:%d/small.html" % s.http], env)
    done = re.search(r"Complete requests:\s+(\d+)", out)
    failed = re.search(r"Failed requests:\s+(\d+)", out)
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    ok = int(done.group(1)) if done else 0
    bad = (int(failed.group(1)) if failed else 3000) + (int(non2xx.group(1)) if non2xx else 0) + (rc != 0)
    return ok, bad, out


def wrk(s, env, close):
    rc, out = run_tool(["wrk", "-t", "2", "-c", "20", "-d", "5s", *(["-H", "Connection: close"] if close else []),
                        "http://127.0.0.1:%d/small.html" % s.http], env)
    done = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    bad = (sum(map(int, errors.groups())) if errors else 0) + (int(non2xx.group(1)) if non2xx else 0) + (rc != 0)
    return (int(done.group(1)) if done else 0), bad, out


def redis(s, env):
    rc, out = run_tool(["redis-benchmark", "-p", str(s.redis), "-k", "0", "-c", "4", "-n", "3000", "-t", "ping,set,get",
                        "-q"], env)
    done = len(re.findall(r"requests per second", out)) * 3000
    bad = (rc != 0) + len(re.findall(r"(?i)error|reset", out))
    return done, bad, out


def dnsperf(s, env):
    rc, out = run_tool(["dnsperf", "-s", "127.0.0.1", "-p", str(s.dns), "-d", str(s.work / "queries"), "-l", "5",
                        "-Q", "500"], env)
    done = re.search(r"Queries completed:\s+(\d+)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    return (int(done.group(1)) if done else 0), (int(lost.group(1)) if lost else 1) + (rc != 0), out


def bulk(s, env):
    ok = bad = 0
    out = ""
    for i in range(2):
        path = s.work / ("got-%d.bin" % i)
        rc, out = run_tool(["curl", "-sS", "--fail", "-o", str(path), "http://127.0.0.1:%d/bulk.bin" % s.http], env)
        good = rc == 0 and hashlib.sha256(path.read_bytes()).hexdigest() == s.bulk_sha
        ok += good
        bad += not good
        path.unlink(missing_ok=True)
    return ok, bad, out


LOADS = [("ab", lambda s, env: ab(s, env, False)), ("ab -k", lambda s, env: ab(s, env, True)),
         ("wrk keep-alive", lambda s, env: wrk(s, env, False)), ("wrk Connection: close", lambda s, env: wrk(s, env, True)),
         ("redis-benchmark -k 0", redis), ("dnsperf (UDP)", dnsperf), ("curl %d MiB, sha256" % BULK_MIB, bulk)]


def drive(servers, env, minutes, restart=None):
    """Rounds of every load until the time is up; restart() once half-way."""
    totals = {name: [0, 0] for name, _ in LOADS}
    failures = []
    end = time.time() + minutes * 60
    restarted = restart is None
    rounds = 0
    round_ends = []
    while time.time() < end or rounds == 0:
        for name, load in LOADS:
            ok, bad, out = load(servers, env)
            totals[name][0] += ok
            totals[name][1] += bad
            if bad:
                failures.append("%s: %d failed\n%s" % (name, bad, out[-1500:]))
        rounds += 1
        round_ends.append(time.time())
        if not restarted and time.time() > end - minutes * 30:
            restart()
            restarted = True
    return totals, failures, rounds, round_ends


# ---- sampling ------------------------------------------------------------------

def wfpr_processes():
    """{label: pid} of the running wfpr processes: the broker, each proxy by
    its --name, wfpr run, and the proxies wfpr run forked (in start order)."""
    out, forked = {}, []
    for line in subprocess.run(["pgrep", "-a", "-x", "wfpr"], capture_output=True, text=True).stdout.splitlines():
        pid, *argv = line.split()
        if "--name" in argv:
            out["proxy " + argv[argv.index("--name") + 1]] = int(pid)
        elif len(argv) > 1 and argv[1] == "run":
            forked.append(int(pid))
        elif len(argv) > 1:
            out["wfpr " + argv[1]] = int(pid)
    forked.sort()
    if forked:  # wfpr run first, then what it forked
        out["wfpr run"] = forked[0]
        for i, pid in enumerate(forked[1:]):
            out["wfpr run's proxy %d" % (i + 1)] = pid
    return out


def sample(pid):
    try:
        status = Path("/proc/%d/status" % pid).read_text()
        rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
        return rss, len(os.listdir("/proc/%d/fd" % pid))
    except (OSError, AttributeError):
        return None


class Sampler(threading.Thread):
    """Samples every wfpr process every `every` seconds: {label: [(t, rss_kib, fds)]}."""

    def __init__(self, every):
        super().__init__(daemon=True)
        self.every, self.samples, self.stop = every, {}, threading.Event()
        self.t0 = time.time()
        self.pids = {}

    def run(self):
        while not self.stop.wait(self.every):
            for label, pid in wfpr_processes().items():
                got = sample(pid)
                if got:
                    first = self.pids.setdefault(label, pid)
                    series = label if pid == first else "%s (restarted, pid %d)" % (label, pid)
                    self.samples.setdefault(series, []).append((round(time.time() - self.t0), *got))


def after_warmup(series, warmup):
    """The samples from the end of warm-up on (stores and caches fill first)."""
    later = [s for s in series if s[0] >= warmup]
    return later if len(later) >= 2 else series[-2:]


# The broker keeps a UDP flow's record, and one no proxy queried, 60 s after
# its last use (GRACE_NS in core/src/preload/broker.c): its store fills for
# that long under steady load, and a shorter run cannot judge its memory.
BROKER_RECORD_LIFETIME_S = 60


def flat(series, warmup, judge_memory=True):
    """The last sample within 10% of the first after warm-up, plus some slack."""
    series = after_warmup(series, warmup)
    if len(series) < 2:
        return True
    (_, rss0, fd0), (_, rss1, fd1) = series[0], series[-1]
    return (not judge_memory or rss1 <= rss0 * 1.10 + 2048) and fd1 <= fd0 * 1.10 + 8


# ---- the backends -----------------------------------------------------------------

def preload(args, work, servers):
    sock = str(work / "broker.sock")
    rules = {}
    for name, text in (("alpha", PASS_RULE), ("beta", INSPECT_RULE)):
        rules[name] = work / (name + ".lua")
        rules[name].write_text(text)
    started = []

    def start(argv):
        p = subprocess.Popen([str(WFPR), *argv], stdout=subprocess.DEVNULL, stderr=open(work / "wfpr.err", "a"))
        started.append(p)
        return p

    def start_proxy(name):
        p = start(["proxy", "--broker", sock, "--name", name, "--rules", str(rules[name]), "--log",
                   str(work / "log.jsonl")])
        deadline = time.time() + 10
        while ("proxy " + name) not in wfpr_processes() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # registered
        return p

    start(["broker", "--socket", sock])
    while not os.path.exists(sock):
        time.sleep(0.05)
    start_proxy("alpha")
    beta = [start_proxy("beta")]

    def restart():
        beta[0].terminate()
        beta[0].wait(timeout=10)
        beta[0] = start_proxy("beta")
        print("restarted proxy beta (pid %d)" % beta[0].pid, file=sys.stderr)

    env = dict(os.environ, LD_PRELOAD=str(SHIM), WFPR_BROKER=sock)
    sampler = Sampler(args.sample)
    sampler.start()
    try:
        totals, failures, rounds, round_ends = drive(servers, env, args.minutes, restart)
    finally:
        sampler.stop.set()
        for p in reversed(started):
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=10)
    return totals, failures, rounds, sampler.samples, [t - sampler.t0 for t in round_ends]


def ebpf(args, work, servers):
    """The load runs inside `wfpr run --backend ebpf`, as its COMMAND."""
    rules = []
    for name, text in (("alpha", PASS_RULE), ("beta", INSPECT_RULE)):
        (work / (name + ".lua")).write_text(text)
        rules.append(work / (name + ".lua"))
    report = work / "driver.json"
    sampler = Sampler(args.sample)
    sampler.start()
    run = subprocess.run([str(WFPR), "run", "--backend", "ebpf", "--rules", str(rules[0]), "--proxy",
                          "beta=%s" % rules[1], "--log", str(work / "log.jsonl"), "--", sys.executable, __file__,
                          "--drive", str(report), "--minutes", str(args.minutes), "--servers",
                          json.dumps([servers.http, servers.redis, servers.dns, str(servers.work), servers.bulk_sha])],
                         capture_output=True, text=True)
    sampler.stop.set()
    if run.returncode != 0 or not report.exists():
        if "not available" in run.stderr:
            print("SKIP: " + run.stderr.strip())
            sys.exit(77)
        raise RuntimeError("wfpr run failed (%d):\n%s" % (run.returncode, run.stderr[-3000:]))
    got = json.loads(report.read_text())
    return got["totals"], got["failures"], got["rounds"], sampler.samples, [t - sampler.t0 for t in got["round_ends"]]


class Known:
    """The servers, as the driver inside wfpr run gets them."""

    def __init__(self, http, redis, dns, work, bulk_sha):
        self.http, self.redis, self.dns, self.work, self.bulk_sha = http, redis, dns, Path(work), bulk_sha


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--backend", choices=["preload", "ebpf"], default="preload")
    ap.add_argument("--sample", type=float, default=60, help="seconds between samples of each process")
    ap.add_argument("--report", help="write the figures as JSON here")
    ap.add_argument("--drive", help=argparse.SUPPRESS)
    ap.add_argument("--servers", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.drive:  # inside wfpr run --backend ebpf
        totals, failures, rounds, round_ends = drive(Known(*json.loads(args.servers)), dict(os.environ), args.minutes)
        Path(args.drive).write_text(json.dumps({"totals": totals, "failures": failures, "rounds": rounds,
                                                "round_ends": round_ends}))
        return 0
    missing = [t for t in ("nginx", "redis-server", "redis-benchmark", "dnsmasq", "dnsperf", "ab", "wrk", "curl")
               if not shutil.which(t)]
    if missing:
        print("SKIP: not installed: " + " ".join(missing))
        return 77
    with tempfile.TemporaryDirectory(prefix="wfpr-soak-") as d:
        work = Path(d)
        os.chmod(work, 0o755)
        servers = Servers(work)
        try:
            totals, failures, rounds, samples, round_ends = (preload if args.backend == "preload" else ebpf)(
                args, work, servers)
        finally:
            servers.stop()
    print("## Soak: %s backend, %.0f min, %d rounds\n" % (args.backend, args.minutes, rounds))
    print("| load | requests (or transfers) | failed |\n|---|---|---|")
    for name, (ok, bad) in totals.items():
        print("| %s | %d | %d |" % (name, ok, bad))
    def warmup(series):
        """The end of the first round that began after the process's first sample."""
        whole = [r for r in round_ends if r > series[0][0]]
        return max(min(60, args.minutes * 30), whole[0] if whole else float("inf"))

    print("\n| process | samples | RSS after warm-up → last (MiB) | descriptors after warm-up → last | flat |\n"
          "|---|---|---|---|---|")
    all_flat = True
    for label, series in sorted(samples.items()):
        judge_memory = label != "wfpr broker" or args.minutes * 60 >= 2 * BROKER_RECORD_LIFETIME_S
        ok = flat(series, warmup(series), judge_memory)
        all_flat &= ok
        base = after_warmup(series, warmup(series))[0]
        verdict = ("yes" if ok else "**no**") + ("" if judge_memory else " (descriptors; memory: the run is shorter "
                                                  "than twice the broker's %d s record lifetime)"
                                                  % BROKER_RECORD_LIFETIME_S)
        print("| %s | %d | %.1f → %.1f | %d → %d | %s |" % (label, len(series), base[1] / 1024, series[-1][1] / 1024,
                                                           base[2], series[-1][2], verdict))
    for f in failures:
        print("\nFAILED " + f, file=sys.stderr)
    if args.report:
        Path(args.report).write_text(json.dumps({"backend": args.backend, "minutes": args.minutes, "rounds": rounds,
                                                 "totals": totals, "samples": samples, "flat": all_flat}, indent=1))
    failed = sum(bad for _, bad in totals.values())
    return 0 if failed == 0 and all_flat else 1


if __name__ == "__main__":
    sys.exit(main())
