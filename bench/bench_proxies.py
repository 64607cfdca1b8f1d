"""The service engine's speed with real programs.

Single-stream iperf3, wrk against nginx, dnsperf against dnsmasq and
redis-benchmark against redis-server: direct and through `wfpr run` (one
proxy, two cooperating proxies, a Lua on_data rule; the preload and the
eBPF backend), against haproxy (one, and two chained), socat and bare C
relays (bench/bare_relay.c, and bench/bare_udp_relay.c for dnsperf: the
user-space limit of a relay that passes a stream or datagrams on; in front
of nginx and redis, a reference for request-response traffic, where a
thread per direction wakes twice per request) measured in the same run, rounds interleaved so that the shared
machine's noise falls on all alike; medians of the rounds. Also the memory
each idle relayed connection costs the proxy and the broker. Prints the
tables and writes them into bench/README.md between the proxies markers.

    python3 bench/bench_proxies.py [--rounds 3] [--seconds 3]
"""
import argparse
import atexit
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from readme_block import write_block

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WFPR = os.path.join(ROOT, "build", "wfpr")
BARE = os.path.join(ROOT, "build", "bare-relay")
BARE_UDP = os.path.join(ROOT, "build", "bare-udp-relay")
PASS = "function on_connect(conn) return pass end\n"
SCAN = ('local EICAR = "X5O!P%@AP[4\\\\PZX54(P^)7CC)7}$EICAR"\n'
        "function on_connect(conn) return inspect end\n"
        "function on_data(conn, dir, chunk)\n"
        "  if chunk:find(EICAR, 1, true) then return close end\n"
        "end\n")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    """Until something is bound there (a probe connection would confuse iperf3's server)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return
        time.sleep(0.05)
    raise RuntimeError("nothing listens on %d" % port)


class Bench:
    def __init__(self, seconds, work):
        self.seconds, self.work = seconds, work
        self.procs = []
        self.rules = {}
        for name, text in (("one", PASS), ("two", PASS), ("scan", SCAN)):
            path = os.path.join(work, name + ".lua")
            with open(path, "w") as f:
                f.write(text)
            self.rules[name] = path

    def start(self, args, **kw):
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
        self.procs.append(p)
        return p

    def servers(self):
        self.iperf = free_port()
        self.start(["iperf3", "-s", "-p", str(self.iperf)])
        self.nginx = self.start_nginx()
        # haproxy (2 threads), and a second one in front of it: haproxy chained twice
        self.haproxy_iperf, self.haproxy_web, self.haproxy_redis, self.socat = (free_port() for _ in range(4))
        self.haproxy2_iperf, self.haproxy2_web, self.haproxy2_redis = (free_port() for _ in range(3))
        self.redis = free_port()
        self.haproxy(("iperf", self.haproxy_iperf, self.iperf), ("web", self.haproxy_web, self.nginx),
                     ("redis", self.haproxy_redis, self.redis))
        self.haproxy(("iperf", self.haproxy2_iperf, self.haproxy_iperf), ("web", self.haproxy2_web, self.haproxy_web),
                     ("redis", self.haproxy2_redis, self.haproxy_redis))
        self.start(["socat", "-b65536", "TCP-LISTEN:%d,reuseaddr,fork" % self.socat, "TCP:127.0.0.1:%d" % self.iperf])
        self.bare, self.bare2 = free_port(), free_port()
        self.start([BARE, str(self.bare), str(self.iperf)])
        self.start([BARE, str(self.bare2), str(self.bare)])
        # the same relays in front of nginx and redis: request-response traffic
        self.bare_web, self.bare_web2, self.bare_redis, self.bare_redis2 = (free_port() for _ in range(4))
        self.start([BARE, str(self.bare_web), str(self.nginx)])
        self.start([BARE, str(self.bare_web2), str(self.bare_web)])
        self.start_dnsmasq()
        self.bare_udp, self.bare_udp2 = free_port(), free_port()
        self.start([BARE_UDP, str(self.bare_udp), str(self.dns)])
        self.start([BARE_UDP, str(self.bare_udp2), str(self.bare_udp)])
        self.start(["redis-server", "--port", str(self.redis), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", self.work])
        self.start([BARE, str(self.bare_redis), str(self.redis)])
        self.start([BARE, str(self.bare_redis2), str(self.bare_redis)])
        for port in (self.iperf, self.nginx, self.haproxy_iperf, self.haproxy_web, self.socat, self.bare, self.bare2,
                     self.haproxy2_iperf, self.haproxy2_web, self.redis, self.haproxy_redis, self.haproxy2_redis,
                     self.bare_web, self.bare_web2, self.bare_redis, self.bare_redis2):
            wait_port(port)

    def start_dnsmasq(self):
        """dnsmasq on self.dns, answering bench.test itself; self.queries: a dnsperf file of it."""
        self.dns = free_port()
        self.start(["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--listen-address=127.0.0.1", "--bind-interfaces",
                    "--port=%d" % self.dns, "--no-resolv", "--no-hosts", "--host-record=bench.test,10.9.8.7",
                    "--cache-size=10000", "--dns-forward-max=1000", "--pid-file="])
        self.queries = os.path.join(self.work, "queries.txt")
        with open(self.queries, "w") as f:
            f.write("bench.test A\n" * 100)

    def start_nginx(self):
        """nginx (one worker) serving /small.txt (100 bytes), and its request
        count at /status; its port."""
        www = os.path.join(self.work, "www")
        os.makedirs(www, exist_ok=True)
        with open(os.path.join(www, "small.txt"), "w") as f:
            f.write("x" * 99 + "\n")
        port = free_port()
        conf = os.path.join(self.work, "nginx.conf")
        with open(conf, "w") as f:
            f.write("daemon off; worker_processes 1; pid %s/nginx.pid; error_log %s/nginx.err;\n"
                    "events { worker_connections 4096; }\n"
                    "http { access_log off; client_body_temp_path %s; proxy_temp_path %s; fastcgi_temp_path %s;\n"
                    "  uwsgi_temp_path %s; scgi_temp_path %s;\n"
                    "  server { listen 127.0.0.1:%d; root %s; location = /status { stub_status; } } }\n"
                    % ((self.work,) * 7 + (port, www)))
        self.start(["nginx", "-c", conf, "-p", self.work])
        wait_port(port)
        return port

    def haproxy(self, *listens):
        """An haproxy (tcp mode, 2 threads) with a `listen` per (name, port, server port)."""
        conf = os.path.join(self.work, "haproxy-%d.cfg" % listens[0][1])
        with open(conf, "w") as f:
            f.write("global\n  nbthread 2\n  maxconn 8000\ndefaults\n  mode tcp\n  timeout connect 5s\n"
                    "  timeout client 60s\n  timeout server 60s\n")
            for name, port, server in listens:
                f.write("listen %s\n  bind 127.0.0.1:%d\n  server s 127.0.0.1:%d\n" % (name, port, server))
        self.start(["haproxy", "-f", conf, "-db"])

    def through(self, chain, backend="preload"):
        """The `wfpr run` prefix for a chain of rules names ([] for direct)."""
        if not chain:
            return []
        args = [WFPR, "run", "--backend", backend, "--rules", self.rules[chain[0]]]
        for name in chain[1:]:
            args += ["--proxy", "%s=%s" % (name, self.rules[name])]
        return args + ["--"]

    def iperf3(self, prefix, port):
        out = subprocess.run(prefix + ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(self.seconds), "-J"],
                             capture_output=True, text=True, timeout=self.seconds + 60)
        result = json.loads(out.stdout)
        if "error" in result:
            raise RuntimeError("iperf3 through %s to %d: %s" % (prefix[:4] or "nothing", port, result["error"]))
        return result["end"]["sum_received"]["bits_per_second"] / 1e9

    def wrk(self, prefix, port, close):
        args = ["wrk", "-c", "50", "-t", "2", "-d", "%ds" % self.seconds]
        if close:
            args += ["-H", "Connection: close"]
        out = subprocess.run(prefix + args + ["http://127.0.0.1:%d/small.txt" % port],
                             capture_output=True, text=True, timeout=self.seconds + 60).stdout
        return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def dnsperf(self, prefix, port=None):
        """Queries per second from one dnsperf client (UDP) for a name dnsmasq answers itself."""
        out = subprocess.run(prefix + ["dnsperf", "-s", "127.0.0.1", "-p", str(port or self.dns), "-d", self.queries,
                                       "-l", str(self.seconds), "-c", "1", "-q", "64"],
                             capture_output=True, text=True, timeout=self.seconds + 60).stdout
        return float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))

    def redis_bench(self, prefix, port):
        """GET requests per second, `redis-benchmark -c 50` (keep-alive, one request in flight per connection)."""
        out = subprocess.run(prefix + ["redis-benchmark", "-p", str(port), "-c", "50", "-n", "60000", "-t", "get",
                                       "--csv"], capture_output=True, text=True, timeout=120).stdout
        row = [line for line in out.splitlines() if line.startswith('"GET"')][0]
        return float(row.split(",")[1].strip('"'))

    def idle_memory(self, n=1000):
        """KiB of proxy + broker RSS per idle relayed connection."""
        script = r"""
import os, resource, socket, sys, time
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
def siblings():
    me, parent = os.getpid(), os.getppid()
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open("/proc/%s/stat" % pid).read().split(") ")[1].split()
            if int(stat[1]) == parent and int(pid) != me:
                out.append(pid)
        except OSError:
            pass
    return out
def rss(pids):
    total = 0
    for pid in pids:
        for line in open("/proc/%s/status" % pid):
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total
server = socket.create_server(("127.0.0.1", 0), backlog=4096)
port, n = server.getsockname()[1], int(sys.argv[1])
pids = siblings()
warm = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]  # warm the allocators
held = [server.accept()[0] for _ in warm]
time.sleep(0.5)
before = rss(pids)
clients = []
for i in range(n):
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"x")
    clients.append(c)
    held.append(server.accept()[0])
for h in held[50:]:
    h.recv(1)
time.sleep(1.0)
print((rss(pids) - before) / n)
"""
        out = subprocess.run(self.through(["one"]) + [sys.executable, "-c", script, str(n)],
                             capture_output=True, text=True, timeout=120)
        return float(out.stdout.strip())

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait()
        self.procs = []


def ebpf_available():
    """Can `wfpr run --backend ebpf` load here (root, BPF)? Says why not."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as rule:
        rule.write(PASS)
        rule.flush()
        probe = subprocess.run([WFPR, "run", "--backend", "ebpf", "--rules", rule.name, "--", "true"],
                               capture_output=True, text=True)
    if probe.returncode != 0:
        print("bench: the eBPF backend's rows are left out: " + " ".join(probe.stderr.split()), file=sys.stderr)
    return probe.returncode == 0


def median_ratio(num, den):
    """The median of per-round ratios (each round's pair measured close in time)."""
    return statistics.median(a / b for a, b in zip(num, den))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="print only; leave bench/README.md alone")
    args = ap.parse_args()
    ebpf = ebpf_available()
    work = tempfile.mkdtemp(prefix="wfpr-bench-")
    b = Bench(args.seconds, work)
    atexit.register(b.stop)  # the servers go, whatever happens
    b.servers()
    backends = ["preload"] + (["ebpf"] if ebpf else [])
    # (measure, path) -> a function of nothing giving one figure
    cases = {}
    for path, prefix, port in [("direct", [], b.iperf), ("bare relay", [], b.bare), ("two bare relays", [], b.bare2),
                               ("haproxy", [], b.haproxy_iperf), ("two haproxy", [], b.haproxy2_iperf),
                               ("socat", [], b.socat)]:
        cases[("iperf3", path)] = (lambda prefix=prefix, port=port: b.iperf3(prefix, port))
    for be in backends:
        cases[("iperf3", "wfpr %s" % be)] = lambda be=be: b.iperf3(b.through(["one"], be), b.iperf)
        cases[("iperf3", "two wfpr %s" % be)] = lambda be=be: b.iperf3(b.through(["one", "two"], be), b.iperf)
        cases[("iperf3", "wfpr %s, Lua on_data" % be)] = lambda be=be: b.iperf3(b.through(["scan"], be), b.iperf)
    web = [("direct", [], b.nginx), ("haproxy", [], b.haproxy_web), ("two haproxy", [], b.haproxy2_web)]
    web += [(("wfpr %s" % be), b.through(["one"], be), b.nginx) for be in backends]
    web += [(("two wfpr %s" % be), b.through(["one", "two"], be), b.nginx) for be in backends]
    for path, prefix, port in web:
        for close in (False, True):
            cases[("wrk close" if close else "wrk keep-alive", path)] = (
                lambda prefix=prefix, port=port, close=close: b.wrk(prefix, port, close))
    cases[("dnsperf", "direct")] = lambda: b.dnsperf([])
    cases[("dnsperf", "two bare relays")] = lambda: b.dnsperf([], b.bare_udp2)
    cases[("redis", "direct")] = lambda: b.redis_bench([], b.redis)
    cases[("redis", "two haproxy")] = lambda: b.redis_bench([], b.haproxy2_redis)
    # request-response through the bare relays (their connection rate, a thread per direction, is no limit)
    cases[("wrk keep-alive", "bare relay")] = lambda: b.wrk([], b.bare_web, False)
    cases[("wrk keep-alive", "two bare relays")] = lambda: b.wrk([], b.bare_web2, False)
    cases[("redis", "two bare relays")] = lambda: b.redis_bench([], b.bare_redis2)
    for be in backends:
        cases[("dnsperf", "two wfpr %s" % be)] = lambda be=be: b.dnsperf(b.through(["one", "two"], be))
        cases[("redis", "two wfpr %s" % be)] = lambda be=be: b.redis_bench(b.through(["one", "two"], be), b.redis)
    got = {k: [] for k in cases}
    for r in range(args.rounds):
        for k, run in cases.items():
            got[k].append(run())
        print("round %d of %d done" % (r + 1, args.rounds), file=sys.stderr)
    memory = statistics.median(b.idle_memory() for _ in range(3))
    b.stop()

    def ratio(measure, path, to="direct"):
        if (measure, path) not in got or (measure, to) not in got:
            return None
        return median_ratio(got[(measure, path)], got[(measure, to)])

    def cell(measure, path, to="direct"):
        r = ratio(measure, path, to)
        return "—" if r is None else "%.2f" % r

    rows = [  # (label, measure, haproxy path, wfpr path template, goal)
        ("iperf3, one `pass` proxy", "iperf3", "haproxy", "wfpr %s", "≥ 0.95 × the bare relay"),
        ("iperf3, two cooperating `pass` proxies", "iperf3", "two haproxy", "two wfpr %s", "≥ 0.95 × two bare relays"),
        ("iperf3, Lua `on_data` over every chunk", "iperf3", None, "wfpr %s, Lua on_data", "≥ 0.60"),
        ("wrk keep-alive, one proxy", "wrk keep-alive", "haproxy", "wfpr %s", "≥ 0.85"),
        ("wrk `Connection: close`, one proxy", "wrk close", "haproxy", "wfpr %s", "≥ 0.70 and above haproxy"),
        ("wrk keep-alive, two proxies", "wrk keep-alive", "two haproxy", "two wfpr %s", ""),
        ("wrk `Connection: close`, two proxies", "wrk close", "two haproxy", "two wfpr %s", "≥ 0.55"),
        ("dnsperf UDP queries, two proxies", "dnsperf", None, "two wfpr %s", "≥ 0.60"),
        ("redis-benchmark `-c 50` GET, two proxies", "redis", "two haproxy", "two wfpr %s", "≥ 0.80"),
    ]
    lines = ["Ratios to direct, medians of the per-round ratios of %d interleaved rounds (`-t %d` / `-d %ds` / `-l %d`):"
             % (args.rounds, args.seconds, args.seconds, args.seconds), "",
             "| measure | haproxy | wfpr preload | wfpr eBPF | bare C relay | goal |", "|---|---|---|---|---|---|"]
    for label, measure, hap, tmpl, goal in rows:
        limit = {"iperf3, one `pass` proxy": cell("iperf3", "bare relay"),
                 "iperf3, two cooperating `pass` proxies": cell("iperf3", "two bare relays"),
                 "wrk keep-alive, one proxy": cell("wrk keep-alive", "bare relay"),
                 "wrk keep-alive, two proxies": cell("wrk keep-alive", "two bare relays"),
                 "dnsperf UDP queries, two proxies": cell("dnsperf", "two bare relays"),
                 "redis-benchmark `-c 50` GET, two proxies": cell("redis", "two bare relays")}.get(label, "")
        lines.append("| %s | %s | %s | %s | %s | %s |" % (label, cell(measure, hap) if hap else "—",
                                                          cell(measure, tmpl % "preload"), cell(measure, tmpl % "ebpf"),
                                                          limit, goal))
    lines += ["", "The single streams against the bare relay in the same rounds (wfpr ÷ bare relay): "
              + ", ".join("%s %s" % (be, cell("iperf3", path % be, to))
                          for be in backends for path, to in (("wfpr %s", "bare relay"), ("two wfpr %s", "two bare relays"))),
              "", "Memory per idle relayed connection (proxy + broker RSS growth over 1,000 connections, median of 3): "
              "**%.1f KiB** (target ≤ 64 KiB)." % memory, "",
              "Rounds (Gbit/s, req/s, queries/s): " + "; ".join(
                  "%s %s: %s" % (m, p, ", ".join(("%.1f" if m == "iperf3" else "%.0f") % x for x in v))
                  for (m, p), v in got.items())]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        write_block("proxies", table, "## The service engine with real programs (service-engine issue)\n\n"
                    "`make bench` runs `bench/bench_proxies.py` (machine: 2 shared vCPUs; clients, proxies and "
                    "servers share them):")


if __name__ == "__main__":
    main()
