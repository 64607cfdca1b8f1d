"""Writes cooperating-proxies.ipynb (run from the repository root; needs nbformat)."""
import nbformat as nbf
nb = nbf.v4.new_notebook()
md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
nb.cells = [
md("""# Three cooperating proxies, one connection, no loop

An antivirus, a DLP engine and a TLS inspector each want to see every connection to a server. Each
has its own **redirector** in the wfpr layer and its own proxy. A **redirect record** travels with the
connection: each proxy copies it from its accepted socket to its outbound socket, and the layer's
redirect state lets each redirector take the connection exactly once. Everything here runs over
real loopback sockets in this kernel process."""),
code("""import hashlib, os, socket, statistics, threading, time
import wfpr

class EchoServer:
    \"\"\"A real TCP server: echoes every byte.\"\"\"
    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.address = self.sock.getsockname()
        threading.Thread(target=self._run, daemon=True).start()
    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()
    def _serve(self, c):
        with c:
            while (b := c.recv(262144)):
                c.sendall(b)

def roundtrip(address, data):
    \"\"\"Connect through the layer, send, read the echo back.\"\"\"
    c = socket.socket()
    wfpr.connect(c, address)
    t = threading.Thread(target=lambda: (c.sendall(data), c.shutdown(socket.SHUT_WR)))
    t.start()
    got = bytearray()
    while (b := c.recv(262144)):
        got += b
    t.join(); c.close()
    return bytes(got)

server = EchoServer()
server.address"""),
md("## The layer and three redirectors\n`wfpr.Proxy` registers a Python callout: redirect to me unless the state says the connection is already mine."),
code("""layer = wfpr.Layer().attach()
names = ["antivirus", "dlp", "tls-inspect"]
proxies = [wfpr.Proxy(layer, name, ports=server.address[1], weight=30 - 10 * i).start()
           for i, name in enumerate(names)]
layer"""),
md("## Send a connection through all three and compare both ends"),
code("""payload = os.urandom(4 << 20)
echoed = roundtrip(server.address, payload)
assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
print("sha256 sent  ", hashlib.sha256(payload).hexdigest())
print("sha256 echoed", hashlib.sha256(echoed).hexdigest())
print({p.name: len(p.connections) for p in proxies})"""),
md("## The record chain each proxy saw\nThe last proxy sees the whole history, one hop per redirect."),
code("""chain = proxies[-1].connections[-1].records
chain"""),
code("""for p in proxies:
    r = p.connections[-1].records
    print(f"{p.name:12s} saw {len(r)} hop(s); its state: {r.state_for(p.redirector).name}")"""),
md("## The chain as a diagram\nGraphviz when it is installed, matplotlib otherwise."),
code("""import matplotlib.pyplot as plt

def draw_chain(records):
    nodes = ["client"] + [h.redirector for h in records] + [f"server {records.original_destination[1]}"]
    try:
        import graphviz  # optional
        g = graphviz.Digraph(graph_attr={"rankdir": "LR"})
        for a, b in zip(nodes, nodes[1:]):
            g.edge(a, b)
        return g
    except ImportError:
        fig, ax = plt.subplots(figsize=(2.3 * len(nodes), 1.6))
        for i, name in enumerate(nodes):
            ax.text(i, 0, name, ha="center", va="center", bbox=dict(boxstyle="round", fc="#e8f0fe"))
            if i:
                ax.annotate("", xy=(i - 0.32, 0), xytext=(i - 0.68, 0), arrowprops=dict(arrowstyle="->"))
        ax.set_xlim(-0.6, len(nodes) - 0.4); ax.set_ylim(-0.5, 0.5); ax.axis("off")
        ax.set_title("one connection, each proxy once")
        plt.close(fig)  # shown once, as the cell's value
        return fig

draw_chain(chain)"""),
md("## What each hop costs\nConnect latency and echo throughput with 0 to 3 proxies in the path (medians; this is a shared machine, so read the trend, not the absolute numbers)."),
code("""def measure(connects=30, size=8 << 20, runs=3):
    lat = []
    for _ in range(connects):
        t0 = time.perf_counter()
        c = socket.socket(); wfpr.connect(c, server.address); c.sendall(b"x"); c.recv(1); c.close()
        lat.append((time.perf_counter() - t0) * 1e3)
    data = os.urandom(size)
    tput = []
    for _ in range(runs):
        t0 = time.perf_counter(); roundtrip(server.address, data)
        tput.append(2 * size / (time.perf_counter() - t0) / 1e6)
    return statistics.median(lat), statistics.median(tput)

results = {}
for p in proxies:
    p.stop()
for n in range(4):
    chain_now = [wfpr.Proxy(layer, f"{names[i]}#{n}", ports=server.address[1], weight=30 - 10 * i).start() for i in range(n)]
    results[n] = measure()
    for p in chain_now:
        p.stop()
results"""),
code("""hops = sorted(results)
fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
a.plot(hops, [results[h][0] for h in hops], "o-"); a.set_xlabel("proxies in the path (hops)"); a.set_ylabel("connect + 1-byte echo, ms (median)")
b.plot(hops, [results[h][1] for h in hops], "o-", color="tab:green"); b.set_xlabel("proxies in the path (hops)"); b.set_ylabel("echo throughput, MB/s (median)")
a.set_xticks(hops); b.set_xticks(hops); fig.tight_layout()
plt.close(fig)
fig"""),
code("""layer.detach()
layer.stats"""),
md("""## The decision log, as a table

`wfpr run --log` writes one JSON line per decision from every proxy: `connect` and `close` for
each connection, and a `verdict` line with the hook and the rule's reason whenever a rule changes a
connection. Here the `wfpr` command that came with the package runs curl through two proxies:
`http_log.lua`, then the antivirus `eicar.lua`. curl fetches a clean file 5 times, then the EICAR
test file once."""),
code("""import http.server, json, shutil, subprocess, tempfile
from pathlib import Path

pkg = Path(wfpr.__file__).parent
WFPR = str(pkg / "bin" / "wfpr") if (pkg / "bin" / "wfpr").exists() else shutil.which("wfpr")
RULES = pkg / "rules"
www = Path(tempfile.mkdtemp())
(www / "clean.txt").write_text("hello\\n" * 1000)
(www / "eicar.com").write_bytes(rb"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*")
handler = lambda *a: type("Q", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *_: None})(*a, directory=str(www))
web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
threading.Thread(target=web.serve_forever, daemon=True).start()
base = f"http://127.0.0.1:{web.server_address[1]}"
log_path = www / "decisions.jsonl"
script = f"for i in 1 2 3 4 5; do curl -s -o /dev/null {base}/clean.txt; done; curl -s -o /dev/null {base}/eicar.com; true"
run = subprocess.run([WFPR, "run", "--rules", str(RULES / "http_log.lua"), "--proxy", f"antivirus={RULES / 'eicar.lua'}",
                      "--log", str(log_path), "--", "sh", "-c", script], capture_output=True, text=True, timeout=120)
events = [json.loads(line) for line in log_path.read_text().splitlines()]
print(run.stderr.strip().splitlines()[-3:])
len(events)"""),
code("""try:
    import pandas as pd
    df = pd.DataFrame(events)
    table = df.groupby(["proxy", "event", "verdict"]).size().rename("lines").reset_index()
except ImportError:  # pandas is optional: the same counts by hand
    from collections import Counter
    table = Counter((e["proxy"], e["event"], e["verdict"]) for e in events)
table"""),
code("""verdicts = [e for e in events if e["event"] == "verdict"]
assert [(v["proxy"], v["hook"], v["verdict"], v["reason"]) for v in verdicts] == \
    [("antivirus", "on_data", "close", "EICAR test file, down")], verdicts
# each connection's life in each proxy: from its connect line to its close line
opened = {(e["proxy"], e["id"]): e["time"] for e in events if e["event"] == "connect"}
life = {}
for e in events:
    if e["event"] in ("close", "error") and (e["proxy"], e["id"]) in opened:
        life.setdefault(e["proxy"], []).append((e["time"] - opened[(e["proxy"], e["id"])]) * 1e3)
counts = {}
for e in events:
    if e["event"] in ("connect", "verdict"):
        counts.setdefault(e["proxy"], {}).setdefault(e["verdict"], 0)
        counts[e["proxy"]][e["verdict"]] += 1
fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
names = sorted(counts)
kinds = sorted({k for c in counts.values() for k in c})
for i, kind in enumerate(kinds):
    a.bar([n + i * 0.25 for n in range(len(names))], [counts[p].get(kind, 0) for p in names], width=0.25, label=kind)
a.set_xticks([n + 0.25 for n in range(len(names))]); a.set_xticklabels(names); a.set_ylabel("decisions"); a.legend()
b.boxplot([life[p] for p in names]); b.set_xticks(range(1, len(names) + 1)); b.set_xticklabels(names)
b.set_ylabel("connection lifetime in the proxy, ms")
fig.tight_layout(); plt.close(fig); web.shutdown()
fig"""),
]
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, "examples/notebooks/cooperating-proxies.ipynb")
