"""The kernel memory an idle relayed connection costs: unreclaimable slab
(/proc/meminfo SUnreclaim) growth over N connections that each sent a
byte and wait, direct and through `wfpr run` with one `pass` proxy on the
eBPF backend (sockets, socket storage, records). Median of 3 runs each.
The proxy's own memory is bench_proxies.py's idle-memory figure.

    sudo python3 bench/kernel_memory.py [--connections 2000]
"""
import argparse
import statistics
import subprocess
import sys
import tempfile

from bench_proxies import PASS, WFPR, ebpf_available

CLIENT = r"""
import resource, socket, sys, time
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
def unreclaimable():
    for line in open("/proc/meminfo"):
        if line.startswith("SUnreclaim:"):
            return int(line.split()[1])
server = socket.create_server(("127.0.0.1", 0), backlog=4096)
port, n = server.getsockname()[1], int(sys.argv[1])
warm = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]  # warm the slabs
held = [server.accept()[0] for _ in warm]
time.sleep(1)
before = unreclaimable()
clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
accepted = [server.accept()[0] for _ in clients]
for c in clients:
    c.sendall(b"x")
for a in accepted:
    a.recv(1)
time.sleep(1)
print((unreclaimable() - before) / n)
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=2000)
    args = ap.parse_args()
    if not ebpf_available():
        sys.exit(1)
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as rule:
        rule.write(PASS)
        rule.flush()
        paths = {"direct": [], "one wfpr eBPF proxy": [WFPR, "run", "--backend", "ebpf", "--rules", rule.name, "--"]}
        got = {name: [] for name in paths}
        for _ in range(3):
            for name, prefix in paths.items():
                out = subprocess.run(prefix + [sys.executable, "-c", CLIENT, str(args.connections)],
                                     capture_output=True, text=True, timeout=300)
                got[name].append(float(out.stdout.strip().splitlines()[-1]))
    print("| path | KiB of unreclaimable slab per idle connection (median of 3) | runs |")
    print("|---|---|---|")
    for name, runs in got.items():
        print("| %s | %.1f | %s |" % (name, statistics.median(runs), ", ".join("%.1f" % r for r in runs)))


if __name__ == "__main__":
    main()
