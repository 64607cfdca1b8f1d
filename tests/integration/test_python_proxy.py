"""Hooks in Python: a wfpr.Proxy with an inspect hook joins a chain of the
preload backend through the binding, ahead of a C proxy with Lua rules."""
import json
import subprocess
import sys

import pytest

from itsupport import PY, sha256_file
from test_faults import preload  # noqa: F401 - the hand-started broker fixture

wfpr = pytest.importorskip("wfpr", reason="the wfpr package is not installed in this Python (make test-python does)")

PROXY = r"""
import sys, wfpr
seen = []
def inspect(chunk, direction):
    seen.append((direction, len(chunk)))
    return chunk
proxy = wfpr.Proxy(None, "pyscan", broker=sys.argv[1], inspect=inspect).start()
print("ready", flush=True)
sys.stdin.readline()
proxy.stop()
print(json.dumps({"down": sum(n for d, n in seen if d == "down"), "connections": len(proxy.connections)}))
""".replace("import sys, wfpr", "import json, sys, wfpr")


def test_python_proxy_in_a_preload_chain(http_server, rules, preload, tmp_path):  # noqa: F811
    py = subprocess.Popen([PY, "-c", PROXY, preload["path"]], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert py.stdout.readline().strip() == "ready"
    preload["proxy"]("beta", rules("beta"))
    out = tmp_path / "got.bin"
    curl = subprocess.run(["curl", "-sS", "--fail", "-o", str(out), http_server["v4"] + "/small.bin"],
                          capture_output=True, text=True, env=preload["env"](), timeout=60)
    assert curl.returncode == 0, curl.stderr
    assert sha256_file(out) == sha256_file(http_server["root"] / "small.bin")
    report, _ = py.communicate("stop\n", timeout=30)
    seen = json.loads(report)
    assert seen["connections"] == 1 and seen["down"] > 256 << 10
    with open(preload["log"]) as f:
        beta = [json.loads(line) for line in f if '"connect"' in line]
    assert [e["hops"] for e in beta] == [["pyscan", "beta"]]
