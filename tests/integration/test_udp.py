"""UDP: a Python client through two proxies to a real UDP echo server."""
import socket
import threading

import pytest

from itsupport import PY


@pytest.fixture
def udp_echo():
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                data, peer = server.recvfrom(65536)
            except socket.timeout:
                continue
            server.sendto(b"echo:" + data, peer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield server.getsockname()
    stop.set()
    t.join()
    server.close()


CLIENT = r"""
import os, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
for i in range(5):
    data = os.urandom(100 + i * 300)
    s.sendto(data, (host, port))
    reply, peer = s.recvfrom(65536)
    assert reply == b"echo:" + data, i
    print("%s:%d" % peer)
"""


def test_udp_through_two(udp_echo, rules, wfpr_run):
    host, port = udp_echo
    run = wfpr_run([("alpha", rules("alpha")), ("beta", rules("beta"))], [PY, "-c", CLIENT, host, str(port)])
    assert run.returncode == 0, run.stderr
    # replies come from the original destination, not from a proxy
    assert run.stdout.split() == ["%s:%d" % (host, port)] * 5
    connects = run.events("connect", "udp")
    assert [e["hops"] for e in connects if e["proxy"] == "alpha"] == [["alpha"]]
    assert [e["hops"] for e in connects if e["proxy"] == "beta"] == [["alpha", "beta"]]
    assert all(e["original_dst"] == "%s:%d" % (host, port) for e in connects)
    closes = run.events("close", "udp")
    assert sorted(e["proxy"] for e in closes) == ["alpha", "beta"]
    assert all(e["bytes_up"] == sum(100 + i * 300 for i in range(5)) for e in closes)
    assert run.summary()["beta"]["flows"] == 1
