"""The service engine's speed with real programs (the service-engine issue).

Single-stream iperf3 and wrk against nginx, direct and through `wfpr run`
(one proxy, two cooperating proxies, a Lua on_data rule), against haproxy
and socat measured in the same run, rounds interleaved so that the shared
machine's noise falls on all alike; medians of the rounds. Also the memory
each idle relayed connection costs the proxy and the broker. Prints the
table and writes it into bench/README.md between the proxies markers.

    python3 bench/bench_proxies.py [--rounds 5] [--seconds 3]
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
        www = os.path.join(self.work, "www")
        os.makedirs(www, exist_ok=True)
        with open(os.path.join(www, "small.txt"), "w") as f:
            f.write("x" * 99 + "\n")
        self.nginx = free_port()
        conf = os.path.join(self.work, "nginx.conf")
        with open(conf, "w") as f:
            f.write("daemon off; worker_processes 1; pid %s/nginx.pid; error_log %s/nginx.err;\n"
                    "events { worker_connections 4096; }\n"
                    "http { access_log off; client_body_temp_path %s; proxy_temp_path %s; fastcgi_temp_path %s;\n"
                    "  uwsgi_temp_path %s; scgi_temp_path %s;\n"
                    "  server { listen 127.0.0.1:%d; root %s; } }\n"
                    % ((self.work,) * 7 + (self.nginx, www)))
        self.start(["nginx", "-c", conf, "-p", self.work])
        self.haproxy_iperf, self.haproxy_web, self.socat = free_port(), free_port(), free_port()
        hconf = os.path.join(self.work, "haproxy.cfg")
        with open(hconf, "w") as f:
            f.write("global\n  nbthread 2\n  maxconn 8000\ndefaults\n  mode tcp\n  timeout connect 5s\n"
                    "  timeout client 60s\n  timeout server 60s\n"
                    "listen iperf\n  bind 127.0.0.1:%d\n  server s 127.0.0.1:%d\n"
                    "listen web\n  bind 127.0.0.1:%d\n  server s 127.0.0.1:%d\n"
                    % (self.haproxy_iperf, self.iperf, self.haproxy_web, self.nginx))
        self.start(["haproxy", "-f", hconf, "-db"])
        self.start(["socat", "-b65536", "TCP-LISTEN:%d,reuseaddr,fork" % self.socat, "TCP:127.0.0.1:%d" % self.iperf])
        for port in (self.iperf, self.nginx, self.haproxy_iperf, self.haproxy_web, self.socat):
            wait_port(port)

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
        return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9

    def wrk(self, prefix, port, close):
        args = ["wrk", "-c", "50", "-t", "2", "-d", "%ds" % self.seconds]
        if close:
            args += ["-H", "Connection: close"]
        out = subprocess.run(prefix + args + ["http://127.0.0.1:%d/small.txt" % port],
                             capture_output=True, text=True, timeout=self.seconds + 60).stdout
        return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="print only; leave bench/README.md alone")
    args = ap.parse_args()
    ebpf = ebpf_available()
    work = tempfile.mkdtemp(prefix="wfpr-bench-")
    b = Bench(args.seconds, work)
    atexit.register(b.stop)  # the servers go, whatever happens
    b.servers()
    iperf_cases = {
        "direct": ([], b.iperf), "one proxy, pass": (b.through(["one"]), b.iperf),
        "two cooperating proxies, pass": (b.through(["one", "two"]), b.iperf),
        "one proxy, Lua on_data scanning every chunk": (b.through(["scan"]), b.iperf),
        "haproxy (tcp, 2 threads)": ([], b.haproxy_iperf), "socat -b65536": ([], b.socat),
    }
    if ebpf:
        iperf_cases["eBPF backend: one proxy, pass"] = (b.through(["one"], "ebpf"), b.iperf)
        iperf_cases["eBPF backend: two cooperating proxies, pass"] = (b.through(["one", "two"], "ebpf"), b.iperf)
    wrk_cases = {"direct": ([], b.nginx), "one proxy, pass": (b.through(["one"]), b.nginx),
                 "two cooperating proxies, pass": (b.through(["one", "two"]), b.nginx),
                 "haproxy (tcp, 2 threads)": ([], b.haproxy_web)}
    if ebpf:
        wrk_cases["eBPF backend: one proxy, pass"] = (b.through(["one"], "ebpf"), b.nginx)
        wrk_cases["eBPF backend: two cooperating proxies, pass"] = (b.through(["one", "two"], "ebpf"), b.nginx)
    gbps = {k: [] for k in iperf_cases}
    rps = {(k, c): [] for k in wrk_cases for c in (False, True)}
    for r in range(args.rounds):
        for name, (prefix, port) in iperf_cases.items():
            gbps[name].append(b.iperf3(prefix, port))
        for (name, close) in rps:
            prefix, port = wrk_cases[name]
            rps[(name, close)].append(b.wrk(prefix, port, close))
        print("round %d of %d done" % (r + 1, args.rounds), file=sys.stderr)
    memory = statistics.median(b.idle_memory() for _ in range(3))
    b.stop()

    med = {k: statistics.median(v) for k, v in gbps.items()}
    lines = ["Single TCP stream, `iperf3 -t %d`, medians of %d interleaved rounds:" % (args.seconds, args.rounds), "",
             "| path | Gbit/s | ratio to direct | target |", "|---|---|---|---|"]
    targets = {"one proxy, pass": "≥ 0.90", "two cooperating proxies, pass": "≥ 0.75",
               "one proxy, Lua on_data scanning every chunk": "≥ 0.50",
               "eBPF backend: one proxy, pass": "≥ 0.90", "eBPF backend: two cooperating proxies, pass": "≥ 0.75"}
    for k, v in med.items():
        lines.append("| %s | %.1f | %.2f | %s |" % (k, v, v / med["direct"], targets.get(k, "")))
    lines += ["", "nginx, 100-byte file, `wrk -c 50 -t 2 -d %ds`, medians:" % args.seconds, "",
              "| path | keep-alive req/s | ratio | `Connection: close` req/s | ratio |", "|---|---|---|---|---|"]
    ka = {k: statistics.median(rps[(k, False)]) for k in wrk_cases}
    cl = {k: statistics.median(rps[(k, True)]) for k in wrk_cases}
    for k in wrk_cases:
        lines.append("| %s | %.0f | %.2f | %.0f | %.2f |" % (k, ka[k], ka[k] / ka["direct"], cl[k], cl[k] / cl["direct"]))
    lines += ["", "Targets: keep-alive ≥ 0.80 and new connection per request ≥ 0.60 of direct through one proxy.", "",
              "Memory per idle relayed connection (proxy + broker RSS growth over 1,000 connections, median of 3): "
              "**%.1f KiB** (target ≤ 64 KiB)." % memory, "",
              "All rounds (Gbit/s): " + "; ".join("%s: %s" % (k, ", ".join("%.1f" % x for x in v)) for k, v in gbps.items())]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        write_block("proxies", table, "## The service engine with real programs (service-engine issue)\n\n"
                    "`make bench` runs `bench/bench_proxies.py` (machine: 2 shared vCPUs; clients, proxies and "
                    "servers share them):")


if __name__ == "__main__":
    main()
