"""The eBPF backend's QUERY cost (the eBPF issue), as root.

Runs build/bench-ebpf five times: a synchronous QUERY of a 1 KiB record the
kernel issued (nine hops) through wfpr_ioctl, against getsockopt(SO_ORIGINAL_DST)
on a connection that nftables redirected, in a network namespace made here,
rounds interleaved in each run. Prints the table and writes it into
bench/README.md between the ebpf markers.

    python3 bench/bench_ebpf.py [--runs 5] [--no-write]
"""
import argparse
import os
import statistics
import subprocess
import sys

from readme_block import write_block

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "build", "bench-ebpf")
NETNS = "wfpr-bench-%d" % os.getpid()
NFT = """table ip wfpr_bench {
  chain output {
    type nat hook output priority -100
    ip daddr 127.0.0.1 tcp dport 39000 redirect to :39001
  }
}
"""


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0 or not os.path.exists(BENCH):
        print("bench_ebpf: skipped: needs root and build/bench-ebpf (the eBPF backend built)", file=sys.stderr)
        return
    sh("ip", "netns", "add", NETNS)
    try:
        sh("ip", "netns", "exec", NETNS, "ip", "link", "set", "lo", "up")
        sh("ip", "netns", "exec", NETNS, "nft", "-f", "-", input=NFT)
        runs = []
        for _ in range(args.runs):
            out = sh(BENCH, "/run/netns/" + NETNS, "39000", "39001").stdout
            runs.append({k: float(v) for k, v in (line.split() for line in out.splitlines())})
    finally:
        subprocess.run(["ip", "netns", "del", NETNS])
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    lines = ["Synchronous QUERY of a %d-byte record (%d hops, issued by the kernel), medians of %d runs "
             "(each the median of 9 rounds of 20,000 calls):" % (med["record_bytes"], med["hops"], args.runs), "",
             "| call | ns | ratio to SO_ORIGINAL_DST | target |", "|---|---|---|---|",
             "| `wfpr_ioctl` QUERY, eBPF backend | %.0f | **%.2f** | ≤ 1.2 |" % (med["query_ns"], med["ratio"]),
             "| the bare `getsockopt` it makes (custom level, 4 KiB buffer) | %.0f | %.2f | |"
             % (med["getsockopt_ns"], med["getsockopt_ns"] / med["so_original_dst_ns"]),
             "| `getsockopt(SO_ORIGINAL_DST)`, nftables redirect, same run | %.0f | 1.00 | |" % med["so_original_dst_ns"],
             "", "Per run (QUERY / SO_ORIGINAL_DST ratio): " + ", ".join("%.2f" % r["ratio"] for r in runs),
             "", "Connections that match no filter (connect, accept, close on loopback; 10 filters in the layer, "
             "one with a process condition), against the same from outside the layer's cgroup, rounds interleaved:",
             "", "| connection | µs | ratio to direct | goal |", "|---|---|---|---|",
             "| in the layer's cgroup, no filter matches | %.1f | **%.3f** | 1.00 within noise |"
             % (med["connect_unmatched_ns"] / 1000, med["connect_ratio"]),
             "| outside the layer (direct) | %.1f | 1.000 | |" % (med["connect_direct_ns"] / 1000),
             "", "Per run (ratio): " + ", ".join("%.3f" % r["connect_ratio"] for r in runs)]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        write_block("ebpf", table, "## The eBPF backend's QUERY (eBPF issue)\n\n`make bench` runs "
                    "`bench/bench_ebpf.py` as root (`build/bench-ebpf` in a network namespace of its own for the "
                    "nftables baseline):")


if __name__ == "__main__":
    main()
