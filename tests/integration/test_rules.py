"""A rule that errors or loops forever: the default verdict applies and the proxy keeps serving."""
import pytest

from itsupport import sha256_file

BROKEN = {
    "errors": "function on_connect(conn) error('boom') end\n",
    "loops": "function on_connect(conn) while true do end end\n",
    "data-errors": "function on_connect(conn) return inspect end\nfunction on_data(c, d, chunk) error('boom') end\n",
    "data-loops": "function on_connect(conn) return inspect end\nfunction on_data(c, d, chunk) while true do end end\n",
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
