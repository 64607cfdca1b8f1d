"""The rules' protocol helpers on real traffic, through `wfpr run` with the
example rules: curl and `openssl s_client` against a local `openssl s_server`
(SNI, ALPN, JA4, checked against an independent JA4 computed here from the
same client's ClientHello), curl and Python against an HTTP server, and dig
against dnsmasq."""
import hashlib
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time

import pytest

from itsupport import PY, ROOT, WFPR, sha256_file
from test_udp import dnsmasq  # noqa: F401 - fixture

RULES = os.path.join(ROOT, "lua", "rules")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tls_server(tmp_path, started):
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=example.test"],
                   check=True, capture_output=True)
    port = free_port()
    started(["openssl", "s_server", "-accept", "127.0.0.1:%d" % port, "-key", str(key), "-cert", str(cert),
             "-www", "-alpn", "http/1.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return port
        except OSError:
            time.sleep(0.05)
    raise AssertionError("openssl s_server did not listen")


def curl_https(name, port, *extra):
    return ["curl", "-sS", "-k", "--max-time", "10", "--resolve", "%s:%d:127.0.0.1" % (name, port), *extra,
            "-o", "/dev/null", "-w", "%{http_code}\n", "https://%s:%d/" % (name, port)]


def ja4_of(hello):
    """JA4 of a raw ClientHello record, computed here independently of the C parser."""
    body = hello[5 + 4:]
    at = 2 + 32
    at += 1 + body[at]
    (n,) = struct.unpack_from(">H", body, at)
    ciphers = [struct.unpack_from(">H", body, at + 2 + i)[0] for i in range(0, n, 2)]
    at += 2 + n
    at += 1 + body[at]
    (n,) = struct.unpack_from(">H", body, at)
    at += 2
    end = at + n
    exts, sni, alpn, versions, sigs = [], False, "", [], []
    while at < end:
        kind, length = struct.unpack_from(">HH", body, at)
        data = body[at + 4:at + 4 + length]
        at += 4 + length
        exts.append(kind)
        if kind == 0:
            sni = True
        elif kind == 16:
            alpn = data[3:3 + data[2]].decode()
        elif kind == 43:
            versions = [struct.unpack_from(">H", data, 1 + i)[0] for i in range(0, data[0], 2)]
        elif kind == 13:
            sigs = [struct.unpack_from(">H", data, 2 + i)[0] for i in range(0, struct.unpack_from(">H", data)[0], 2)]

    def grease(v):
        return (v & 0x0f0f) == 0x0a0a and (v >> 8) == (v & 0xff)

    ciphers = [c for c in ciphers if not grease(c)]
    exts = [e for e in exts if not grease(e)]
    version = max(v for v in versions if not grease(v))
    code = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10"}[version]
    a = "t%s%s%02d%02d%s" % (code, "d" if sni else "i", len(ciphers), len(exts), alpn[0] + alpn[-1] if alpn else "00")
    b = hashlib.sha256(",".join("%04x" % c for c in sorted(ciphers)).encode()).hexdigest()[:12]
    c_text = ",".join("%04x" % e for e in sorted(e for e in exts if e not in (0, 16)))
    c_text += "_" + ",".join("%04x" % s for s in sigs)
    return "%s_%s_%s" % (a, b, hashlib.sha256(c_text.encode()).hexdigest()[:12])


def capture_hello(command):
    """The first bytes a client sends: a listener of our own, no TLS."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    got = {}

    def accept():
        conn, _ = listener.accept()
        conn.settimeout(5)
        data = b""
        while len(data) < 5 or len(data) < 5 + struct.unpack_from(">H", data, 3)[0]:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        got["hello"] = data
        conn.close()

    t = threading.Thread(target=accept)
    t.start()
    subprocess.run(command(port), capture_output=True, timeout=30)
    t.join(10)
    listener.close()
    return got["hello"]


def test_tls_sni_allow_list_and_ja4(tls_server, wfpr_run):
    rules = os.path.join(RULES, "tls_sni.lua")
    ok = wfpr_run([("tls_sni", rules)], curl_https("example.test", tls_server))
    assert ok.returncode == 0 and ok.stdout.strip() == "200", ok.stdout + ok.stderr
    said = re.search(r"sni=example\.test alpn=(\S+) ja4=(\S+) pass", ok.stderr)
    assert said, ok.stderr
    assert said.group(1) == "h2"  # curl offers h2 first
    expected = ja4_of(capture_hello(lambda port: curl_https("example.test", port)))
    assert said.group(2) == expected, (said.group(2), expected)

    refused = wfpr_run([("tls_sni", rules)], curl_https("evil.test", tls_server))
    assert refused.returncode != 0 and refused.stdout.strip() != "200"
    assert "sni=evil.test" in refused.stderr and "closed" in refused.stderr
    # the decision log says which hook closed it, and why
    verdicts = refused.events("verdict")
    assert [(v["hook"], v["verdict"], v["reason"]) for v in verdicts] == \
        [("on_data", "close", "server name evil.test is not allowed")], verdicts

    # openssl s_client, with an ALPN of its own
    s_client = wfpr_run([("tls_sni", rules)], ["sh", "-c", 'echo | openssl s_client -connect 127.0.0.1:"$0" '
                                               '-servername localhost -alpn http/1.1', str(tls_server)])
    assert "sni=localhost alpn=http/1.1" in s_client.stderr, s_client.stderr

    # not TLS at all: closed, with the reason
    plain = wfpr_run([("tls_sni", rules)], ["curl", "-sS", "--max-time", "5", "http://127.0.0.1:%d/" % tls_server])
    assert "not a ClientHello (not a TLS handshake record): closed" in plain.stderr, plain.stderr


def test_http_policy(http_server, wfpr_run, tmp_path):
    rules = os.path.join(RULES, "http_policy.lua")
    url = http_server["v4"] + "/small.bin"
    got = wfpr_run([("http_policy", rules)], ["curl", "-sS", "--fail", "-o", str(tmp_path / "x"), url])
    assert got.returncode == 0, got.stderr
    assert sha256_file(tmp_path / "x") == sha256_file(http_server["root"] / "small.bin")
    assert re.search(r"GET /small\.bin host=127\.0\.0\.1 pass", got.stderr), got.stderr

    delete = wfpr_run([("http_policy", rules)], ["curl", "-sS", "-X", "DELETE", url])
    assert delete.returncode != 0 and "DELETE /small.bin host=127.0.0.1 closed" in delete.stderr, delete.stderr

    other = wfpr_run([("http_policy", rules)], ["curl", "-sS", "-H", "Host: evil.test", url])
    assert other.returncode != 0 and "host=evil.test closed" in other.stderr, other.stderr

    # Python's urllib, its head in one chunk; and a head sent a byte at a time
    py = ("import socket, sys, urllib.request\n"
          "print(len(urllib.request.urlopen(sys.argv[1]).read()))\n"
          "host, port = sys.argv[1].split('/')[2].split(':')\n"
          "s = socket.create_connection((host, int(port)))\n"
          "for b in b'HEAD /small.bin HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n':\n"
          "    s.send(bytes([b]))\n"
          "print(s.recv(100).split(b'\\r\\n')[0].decode())\n")
    slow = wfpr_run([("http_policy", rules)], [PY, "-c", py, url])
    assert slow.returncode == 0, slow.stderr
    assert slow.stdout.split("\n")[:2] == [str((http_server["root"] / "small.bin").stat().st_size),
                                            "HTTP/1.0 200 OK"], slow.stdout
    assert "HEAD /small.bin host=localhost pass" in slow.stderr


def test_dns_block(dnsmasq, wfpr_run):  # noqa: F811 - the fixture
    rules = os.path.join(RULES, "dns_block.lua")
    dig = ["dig", "@127.0.0.1", "-p", str(dnsmasq), "+short", "+tries=1", "+time=2"]
    ok = wfpr_run([("dns_block", rules)], [*dig, "www.example.test"])
    assert ok.returncode == 0 and ok.stdout.strip() == "192.0.2.1", ok.stdout + ok.stderr
    assert "query www.example.test type=1 pass" in ok.stderr, ok.stderr
    blocked = wfpr_run([("dns_block", rules)], [*dig, "x.ads.example.test"])
    assert blocked.stdout.strip() != "192.0.2.1" and "timed out" in blocked.stdout, blocked.stdout
    assert "query x.ads.example.test type=1 dropped" in blocked.stderr, blocked.stderr
    drops = blocked.events("verdict", proto="udp")
    assert drops and all((v["hook"], v["verdict"], v["reason"]) == ("on_datagram", "drop", "blocked name x.ads.example.test")
                         for v in drops), drops


def test_record_then_replay(http_server, wfpr_run, tmp_path):
    """wfpr run --record writes a transcript of each inspected connection;
    wfpr rules test replays it through the rule, offline, to the same verdicts."""
    rules = os.path.join(RULES, "http_policy.lua")
    record = tmp_path / "transcripts"
    url = http_server["v4"] + "/small.bin"
    run = wfpr_run([("http_policy", rules)], ["sh", "-c", 'curl -s -o /dev/null "$0"; curl -s -X DELETE "$0"', url],
                   extra=["--record", str(record)])
    files = sorted(record.iterdir())
    assert len(files) == 2, files
    text = files[0].read_text()
    assert text.startswith("# recorded by wfpr proxy http_policy") and "\nconnect tcp 127.0.0.1:" in text
    assert "\nup hex " + b"GET /small.bin HTTP/1.1".hex() in text and text.endswith("close\n")
    replay = subprocess.run([WFPR, "rules", "test", rules, *map(str, files)], capture_output=True, text=True,
                            timeout=60)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "pass" in replay.stdout and "close (method DELETE is not allowed)" in replay.stdout, replay.stdout
