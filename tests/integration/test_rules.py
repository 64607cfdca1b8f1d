"""A rule that errors or loops forever, in Lua or inside a library function
(where the instruction budget does not reach): the default verdict applies
and the proxy keeps serving."""
import pytest

from itsupport import PY, sha256_file

BROKEN = {
    "errors": "function on_connect(conn) error('boom') end\n",
    "loops": "function on_connect(conn) while true do end end\n",
    "data-errors": "function on_connect(conn) return inspect end\nfunction on_data(c, d, chunk) error('boom') end\n",
    "data-loops": "function on_connect(conn) return inspect end\nfunction on_data(c, d, chunk) while true do end end\n",
    "pattern-stalls": "function on_connect(conn) string.find(string.rep('a', 1e5), '.-.-.-.-.-.-.-b') end\n",
    "data-pattern-stalls": "function on_connect(conn) return inspect end\n"
                           "function on_data(c, d, chunk) (chunk .. chunk):find('.-.-.-.-.-.-.-wfpr-stall-marker') end\n",
    "rep-stalls": "function on_connect(conn) string.rep('', math.maxinteger) table.move({}, 1, 2^40, 2) end\n",
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_rule_fails_open(kind, http_server, rules, wfpr_run, tmp_path):
    fetches = 3
    outs = [tmp_path / ("got%d.bin" % i) for i in range(fetches)]
    script = "; ".join('curl -sS --fail -o "%s" "$1"' % o for o in outs)
    run = wfpr_run([("broken", rules("broken", BROKEN[kind])), ("fine", rules("fine"))],
                   ["sh", "-c", script, "sh", http_server["v4"] + "/small.bin"])
    assert run.returncode == 0, run.stderr
    want = sha256_file(http_server["root"] / "small.bin")
    assert all(sha256_file(o) == want for o in outs)
    summary = run.summary()
    assert summary["broken"]["connections"] == fetches and summary["broken"]["rule_errors"] >= fetches
    assert summary["fine"]["connections"] == fetches and summary["fine"]["rule_errors"] == 0


def test_fail_closed_blocks(http_server, rules, wfpr_run):
    run = wfpr_run([("broken", rules("broken", BROKEN["errors"]))],
                   ["curl", "-sS", "--fail", "-o", "/dev/null", http_server["v4"] + "/small.bin"],
                   extra=["--fail-closed"])
    assert run.returncode != 0
    assert run.summary()["broken"]["block"] == 1


MANY_CLIENT = r"""
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
refused = 0
for _ in range(n):
    s = socket.create_connection((host, port))
    try:
        s.sendall(b"GET /small.bin HTTP/1.0\r\n\r\n")
        refused += s.recv(1) == b""
    except ConnectionError:
        refused += 1
    s.close()
print(refused)
"""


def test_blocked_connections_free_their_tags(http_server, rules, wfpr_run):
    """on_close runs for blocked connections too, so conn.tag is freed: 400
    blocked connections with a 100 KB tag each stay far below the rule's
    16 MiB cap (they used to reach it after about 160, and the rule then
    failed open, letting traffic through a block-list). Every connect line
    has its close line."""
    rule = rules("bigtag", 'function on_connect(conn) conn.tag.big = string.rep("x", 100000) return block end\n'
                           'function on_close(conn, stats) end\n')
    host, port = http_server["v4"][len("http://"):].split(":")
    run = wfpr_run([("bigtag", rule)], [PY, "-c", MANY_CLIENT, host, port, "400"])
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "400"  # every one blocked
    row = run.summary()["bigtag"]
    assert row["block"] == 400 and row["rule_errors"] == 0, run.stderr
    connects, closes = run.events("connect"), run.events("close")
    assert len(connects) == 400 and sorted(e["id"] for e in connects) == sorted(e["id"] for e in closes)
    assert len({e["id"] for e in connects}) == 400
