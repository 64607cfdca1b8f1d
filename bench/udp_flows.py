"""What many UDP flows cost a proxy: N client sockets, each its own flow,
query dnsmasq in turn (32 queries in flight), direct and through one
`wfpr run` `pass` proxy on each backend. A proxy finds a datagram's flow by
its client's address in a hash map, so the rate with 10,000 flows should
stay near the rate with 100. Rounds interleaved; medians of the per-round
ratios to direct. Prints the table and writes it into bench/README.md
between the udpflows markers.

    python3 bench/udp_flows.py [--rounds 3] [--flows 100,10000]
"""
import argparse
import atexit
import re
import statistics
import subprocess
import sys
import tempfile

from bench_proxies import Bench, ebpf_available, median_ratio
from readme_block import write_block

# The client: one socket per flow, each asked once to start its flow, then
# ROUNDS passes over all of them; prints queries per second of the passes.
CLIENT = r"""
import socket, struct, sys, time
port, n, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
query = struct.pack("!6H", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x05bench\x04test\x00" + struct.pack("!2H", 1, 1)
socks = []
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(query, ("127.0.0.1", port))
    s.recvfrom(512)
    socks.append(s)
start = time.time()
for _ in range(rounds):
    for i in range(0, n, 32):
        window = socks[i:i + 32]
        for s in window:
            s.sendto(query, ("127.0.0.1", port))
        for s in window:
            s.recvfrom(512)
print("rate %.0f" % (n * rounds / (time.time() - start)))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--flows", default="100,10000", help="flow counts, comma-separated")
    ap.add_argument("--no-write", action="store_true", help="print only; leave bench/README.md alone")
    args = ap.parse_args()
    counts = [int(n) for n in args.flows.split(",")]
    backends = ["preload"] + (["ebpf"] if ebpf_available() else [])
    b = Bench(3, tempfile.mkdtemp(prefix="wfpr-bench-"))
    atexit.register(b.stop)
    b.start_dnsmasq()

    def rate(prefix, n):
        # about 40,000 queries a pass over all flows, whatever their number
        out = subprocess.run(prefix + [sys.executable, "-c", CLIENT, str(b.dns), str(n), str(max(1, 40000 // n))],
                             capture_output=True, text=True, timeout=600)
        found = re.search(r"rate (\d+)", out.stdout)
        if not found:
            sys.exit("udp_flows: %s flows through %s failed: %s" % (n, prefix or "nothing", out.stderr[-2000:]))
        return float(found.group(1))

    paths = [("direct", [])] + [("wfpr %s" % be, b.through(["one"], be)) for be in backends]
    got = {(n, path): [] for n in counts for path, _ in paths}
    for r in range(args.rounds):
        for n in counts:
            for path, prefix in paths:
                got[(n, path)].append(rate(prefix, n))
        print("round %d of %d done" % (r + 1, args.rounds), file=sys.stderr)
    b.stop()

    lines = ["Queries per second (Python client, 32 in flight) and ratio to direct, medians of %d interleaved rounds:"
             % args.rounds, "",
             "| flows | direct | " + " | ".join("wfpr %s" % be for be in backends) + " |",
             "|---|---|" + "---|" * len(backends)]
    for n in counts:
        cells = ["%.0f" % statistics.median(got[(n, "direct")])]
        cells += ["%.0f (%.2f)" % (statistics.median(got[(n, "wfpr %s" % be)]),
                                   median_ratio(got[(n, "wfpr %s" % be)], got[(n, "direct")])) for be in backends]
        lines.append("| %d | %s |" % (n, " | ".join(cells)))
    lines += ["", "Rounds: " + "; ".join("%d flows %s: %s" % (n, p, ", ".join("%.0f" % x for x in v))
                                       for (n, p), v in got.items())]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        write_block("udpflows", table, "## Many UDP flows through one proxy (performance issue)\n\n"
                    "`make bench` runs `bench/udp_flows.py`: each client socket is a flow of its own:")


if __name__ == "__main__":
    main()
