"""curl and Python's urllib to a real HTTP server through one, two and three proxies."""
import os
import subprocess

import pytest

from itsupport import INSPECT_RULE, PY, assert_chain, sha256_file

CHAINS = [["alpha"], ["alpha", "beta"], ["alpha", "beta", "gamma"]]


@pytest.mark.parametrize("names", CHAINS, ids=lambda n: "%d-proxies" % len(n))
def test_curl_through_chain(names, http_server, rules, wfpr_run, tmp_path):
    proxies = [(n, rules(n, INSPECT_RULE) if i % 2 else rules(n))
               for i, n in enumerate(names)]
    out = tmp_path / "got.bin"
    run = wfpr_run(proxies, ["curl", "-sS", "--fail", "-o", str(out), http_server["v4"] + "/small.bin"])
    assert run.returncode == 0, run.stderr
    assert sha256_file(out) == sha256_file(http_server["root"] / "small.bin")
    assert_chain(run, names, connections=1)
    closes = run.events("close")
    assert len(closes) == len(names)
    assert all(e["bytes_down"] > 256 << 10 and e["error"] is None for e in closes)


@pytest.mark.parametrize("names", CHAINS, ids=lambda n: "%d-proxies" % len(n))
def test_urllib_through_chain(names, http_server, rules, wfpr_run):
    proxies = [(n, rules(n)) for n in names]
    script = ("import hashlib, sys, urllib.request\n"
              "for _ in range(3):\n"
              "    print(hashlib.sha256(urllib.request.urlopen(sys.argv[1]).read()).hexdigest())\n")
    run = wfpr_run(proxies, [PY, "-c", script, http_server["v4"] + "/small.bin"])
    assert run.returncode == 0, run.stderr
    want = sha256_file(http_server["root"] / "small.bin")
    assert run.stdout.split() == [want] * 3
    assert_chain(run, names, connections=3)


def test_ipv6_through_two(http_server, rules, wfpr_run, tmp_path):
    out = tmp_path / "got.bin"
    run = wfpr_run([("alpha", rules("alpha")), ("beta", rules("beta"))],
                   ["curl", "-sS", "--fail", "-o", str(out), http_server["v6"] + "/small.bin"])
    assert run.returncode == 0, run.stderr
    assert sha256_file(out) == sha256_file(http_server["root"] / "small.bin")
    assert_chain(run, ["alpha", "beta"], connections=1)
    assert all(e["original_dst"].startswith("[::1]:") for e in run.events("connect"))


def test_100_mib_through_two(http_server, rules, wfpr_run):
    run = wfpr_run([("alpha", rules("alpha")), ("beta", rules("beta", INSPECT_RULE))],
                   ["sh", "-c", 'curl -sS --fail "$1" | sha256sum', "sh", http_server["v4"] + "/big.bin"],
                   timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[0] == sha256_file(http_server["root"] / "big.bin")
    assert_chain(run, ["alpha", "beta"], connections=1)
    assert all(e["bytes_down"] >= 100 << 20 for e in run.events("close"))


def test_client_sees_original_peer(http_server, rules, wfpr_run):
    """getpeername in the client names the server, not the proxy."""
    script = ("import socket, sys\n"
              "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
              "print('%s:%d' % s.getpeername())\n")
    port = http_server["v4"].rsplit(":", 1)[1]
    run = wfpr_run([("alpha", rules("alpha"))], [PY, "-c", script, port])
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "127.0.0.1:" + port
    assert run.events("connect")[0]["hops"] == ["alpha"]


def test_summary_and_exit_status(http_server, rules, wfpr_run):
    run = wfpr_run([("alpha", rules("alpha"))],
                   ["sh", "-c", 'curl -sS -o /dev/null "$1"; exit 7', "sh", http_server["v4"] + "/small.bin"])
    assert run.returncode == 7
    row = run.summary()["alpha"]
    assert row["connections"] == 1 and row["pass"] == 1 and row["bytes_down"] > 256 << 10
