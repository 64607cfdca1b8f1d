"""Python binding cost: a QUERY from Python against the same QUERY in C; and
wfpr.Proxy's relay (the C engine) against direct loopback.

Run with `make bench`. Each round times, back to back, the C figure (the
bench-records binary, in its own process) and the Python figures here, on
the same machine; the tables report medians over the rounds.
"""
import re
import socket
import statistics
import subprocess
import sys
import threading
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


RELAY_BYTES = 512 << 20


def sink_server():
    """A server that reads and discards; each connection's byte count goes to done."""
    server = socket.create_server(("127.0.0.1", 0))
    done = []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            total = 0
            with conn:
                while True:
                    chunk = conn.recv(1 << 20)
                    if not chunk:
                        break
                    total += len(chunk)
            done.append(total)

    threading.Thread(target=serve, daemon=True).start()
    return server, done


def send_gbits(address, through_layer):
    """Gbit/s of RELAY_BYTES sent to address, until the server has read them all."""
    _, done = address
    block = b"\0" * (1 << 20)
    client = socket.socket()
    t0 = time.perf_counter()
    (wfpr.connect if through_layer else socket.socket.connect)(client, address[0].getsockname())
    for _ in range(RELAY_BYTES // len(block)):
        client.sendall(block)
    client.close()
    n = len(done)
    while len(done) < n + 1 and time.perf_counter() - t0 < 120:
        time.sleep(0.001)
    assert done[-1] == RELAY_BYTES, "the relay lost bytes"
    return RELAY_BYTES * 8 / (time.perf_counter() - t0) / 1e9


def relay_rounds():
    server, done = sink_server()
    direct, passing, inspecting = [], [], []
    with wfpr.Layer() as layer:
        for _ in range(ROUNDS):
            direct.append(send_gbits((server, done), False))
            with wfpr.Proxy(layer, "pass", ports=server.getsockname()[1]):
                passing.append(send_gbits((server, done), True))
            with wfpr.Proxy(layer, "inspect", ports=server.getsockname()[1], inspect=lambda chunk, d: chunk):
                inspecting.append(send_gbits((server, done), True))
    server.close()
    md, mp, mi = statistics.median(direct), statistics.median(passing), statistics.median(inspecting)
    print("\n| wfpr.Proxy relay (C engine), %d MiB one way | median Gbit/s | ratio to direct |" % (RELAY_BYTES >> 20))
    print("|---|---|---|")
    print(f"| direct loopback | {md:.1f} | 1.00 |")
    print(f"| through a `pass` wfpr.Proxy | {mp:.1f} | {mp / md:.2f} |")
    print(f"| through a wfpr.Proxy whose Python `inspect` sees every chunk | {mi:.1f} | {mi / md:.2f} |")
    print(f"\nrounds (Gbit/s): direct {[round(x, 1) for x in direct]}, pass {[round(x, 1) for x in passing]}, "
          f"inspect {[round(x, 1) for x in inspecting]}", file=sys.stderr)


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
    relay_rounds()


if __name__ == "__main__":
    main()
