"""Python binding cost: a QUERY from Python against the same QUERY in C.

Run with `make bench`. Each round times, back to back, the C figure (the
bench-records binary, in its own process) and the Python figures here, on
the same machine; the table reports medians over the rounds.
"""
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import wfpr
from wfpr import _wfpr

ROUNDS = 5
CALLS = 50_000
C_BENCH = Path(__file__).resolve().parents[1] / "build" / "bench-records"


def per_call_ns(fn, calls=CALLS):
    fn()
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    return (time.perf_counter_ns() - t0) / calls


def c_query_ns():
    out = subprocess.run([str(C_BENCH)], check=True, capture_output=True, text=True).stdout
    return float(re.search(r"\| QUERY on the inproc backend \| (\d+) ns", out).group(1))


def main():
    with wfpr.Layer() as layer, socket.create_server(("127.0.0.1", 0)) as proxy:
        red = layer.redirector("bench")
        layer.add_callout(lambda r: wfpr.Redirect(proxy.getsockname()), redirector=red, ports=9)
        client = socket.socket()
        wfpr.connect(client, ("127.0.0.1", 9))
        accepted, _ = proxy.accept()
        fd = accepted.fileno()
        code = wfpr.SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS
        flat, friendly, c = [], [], []
        for _ in range(ROUNDS):
            c.append(c_query_ns())
            flat.append(per_call_ns(lambda: _wfpr.ioctl(fd, code, None, 1024, False)))
            friendly.append(per_call_ns(lambda: wfpr.query_redirect_records(accepted)))
        client.close()
        accepted.close()
    mc, mf, mq = statistics.median(c), statistics.median(flat), statistics.median(friendly)
    print("| measure | median per call | over the C call | target |")
    print("|---|---|---|---|")
    print(f"| QUERY in C (`wfpr_ioctl`, bench-records) | {mc:.0f} ns | | |")
    print(f"| QUERY from Python, flat binding (`_wfpr.ioctl`) | {mf:.0f} ns | {mf - mc:+.0f} ns | |")
    print(f"| `wfpr.query_redirect_records(sock)` | {mq:.0f} ns | {mq - mc:+.0f} ns | <= 2000 ns over C |")
    print(f"\nrounds: C {[round(x) for x in c]}, flat {[round(x) for x in flat]}, "
          f"query_redirect_records {[round(x) for x in friendly]}", file=sys.stderr)


if __name__ == "__main__":
    main()
