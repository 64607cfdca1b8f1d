"""The CLI's contract: --help everywhere, a wrong option or a missing file is exit status 2 with a message."""
import os
import socket
import subprocess
import time

import pytest

from itsupport import ROOT, WFPR


def wfpr(*args):
    return subprocess.run([WFPR, *args], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("command", [["run"], ["broker"], ["proxy"], ["inspect"], ["rules", "check"], ["redirector"]])
def test_help(command):
    r = wfpr(*command, "--help")
    assert r.returncode == 0 and "usage: wfpr run" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["run", "--rules", "/nonexistent.lua", "--", "true"], "cannot read the rules file"),
    (["run", "--rules"], "needs a value"),
    (["run", "--bogus", "x", "--", "true"], "unknown or invalid option '--bogus'"),
    (["run", "--", "true"], "give --rules"),
    (["run", "--rules", "lua/rules/tag.lua"], "give the command after --"),
    (["run", "--rules", "lua/rules/tag.lua", "--backend", "nope", "--", "true"], "unknown backend 'nope'"),
    (["run", "--rules", "lua/rules/tag.lua", "--proxy", "noequals", "--", "true"], "NAME=RULES.lua"),
    (["run", "--rules", "lua/rules/tag.lua", "--log", "/nonexistent/dir/log", "--", "true"], "cannot open the log"),
    (["broker"], "--socket PATH is required"),
    (["broker", "--bogus"], "unknown or incomplete option"),
    (["redirector"], "add, run, remove --name NAME, or list"),
    (["redirector", "add", "--name", "x"], "give --name NAME, --listen ADDR:PORT"),
    (["redirector", "add", "--name", "x", "--listen", "nonsense"], "invalid option '--listen'"),
    (["proxy", "--broker", "/tmp/x", "--name", "x", "--key-file", "/nonexistent.key"], "cannot read the key file"),
    (["proxy", "--name", "x"], "give --name NAME, and --broker PATH (preload) or --backend ebpf"),
    (["proxy", "--broker", "/tmp/x", "--name", "x", "--rules", "/nonexistent.lua"], "cannot read the rules file"),
    (["proxy", "--broker", "/tmp/x", "--name", "x", "--listen", "nonsense"], "invalid option '--listen'"),
    (["run", "--rules", "lua/rules/tag.lua", "--dport", "0", "--", "true"], "proxy tag: dport: '0'"),
    (["run", "--rules", "lua/rules/tag.lua", "--comm", "a-name-longer-than-15", "--", "true"], "comm:"),
    (["proxy", "--backend", "ebpf", "--name", "x", "--broker", "/tmp/x"], "--broker is for --backend preload"),
    (["proxy", "--broker", "/tmp/x", "--name", "x", "--dst", "10.0.0.0/33"], "dst: '10.0.0.0/33'"),
    (["proxy", "--broker", "/tmp/x", "--name", "x", "--uid", "no-such-user-here"], "no user 'no-such-user-here'"),
    (["daemon", "--bogus", "x"], "unknown or invalid option '--bogus'"),
    (["daemon", "--cgroup"], "missing value '--cgroup'"),
    (["nonsense"], "unknown command nonsense"),
])
def test_usage_errors(args, message):
    r = subprocess.run([WFPR, *args], capture_output=True, text=True, timeout=30,
                       cwd=__file__.rsplit("/tests/", 1)[0])
    assert r.returncode == 2, r.stderr
    assert message in r.stderr


def test_proxy_without_broker_says_so(tmp_path):
    r = wfpr("proxy", "--broker", str(tmp_path / "none.sock"), "--name", "x")
    assert r.returncode == 1 and "WSAENETDOWN" in r.stderr


def test_run_exits_with_command_status_on_missing_command():
    r = subprocess.run([WFPR, "run", "--rules", "lua/rules/tag.lua", "--", "/nonexistent/program"],
                       capture_output=True, text=True, timeout=30, cwd=__file__.rsplit("/tests/", 1)[0])
    assert r.returncode == 127 and "cannot run /nonexistent/program" in r.stderr


def test_run_says_ready_once_command_runs(tmp_path, started):
    """NOTIFY_SOCKET gets READY=1 (systemd's Type=notify) once COMMAND runs
    through the proxies; COMMAND does not inherit NOTIFY_SOCKET."""
    out = tmp_path / "env.txt"
    proc = started([WFPR, "run", "--rules", "lua/rules/tag.lua", "--", "sh", "-c",
                    'echo "notify=${NOTIFY_SOCKET:-unset}" > "$0"; sleep 30', str(out)],
                   ready=True, cwd=__file__.rsplit("/tests/", 1)[0], stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while not out.exists() or not out.read_text():
        assert time.time() < deadline
        time.sleep(0.02)
    assert out.read_text().strip() == "notify=unset"
    assert proc.poll() is None


def test_run_never_says_ready_when_command_cannot_start(tmp_path):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(0.1)
    r = subprocess.run([WFPR, "run", "--rules", "lua/rules/tag.lua", "--", "/nonexistent/program"],
                       capture_output=True, text=True, timeout=30, cwd=__file__.rsplit("/tests/", 1)[0],
                       env=dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify")))
    assert r.returncode == 127
    with pytest.raises(socket.timeout):
        notify.recv(100)


def test_rules_test_fails_on_a_wrong_expect(tmp_path):
    """wfpr rules test exits 1, and says where, when a verdict or its reason is not the expected one."""
    transcript = tmp_path / "t.txt"
    transcript.write_text('connect tcp 127.0.0.1:1 -> 127.0.0.1:80\nup "X5O!P%@AP[4\\\\PZX54(P^)7CC)7}$EICAR-'
                          'STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"\nexpect close EICAR test file, down\n'
                          'expect pass\nbogus line\n')
    r = wfpr("rules", "test", os.path.join(ROOT, "lua", "rules", "eicar.lua"), str(transcript))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "up 68 bytes: close (EICAR test file, up)" in r.stdout, r.stdout
    assert 't.txt:3: expected the reason "EICAR test file, down", the rule gave "EICAR test file, up"' in r.stderr
    assert "t.txt:4: expected the verdict pass, the rule gave close" in r.stderr
    assert "t.txt:5: unknown line: bogus line" in r.stderr
