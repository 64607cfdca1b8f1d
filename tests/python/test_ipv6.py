"""The same cooperation over IPv6 loopback: records carry IPv6 addresses."""
import hashlib
import os
import socket
import threading

import pytest

import wfpr

pytestmark = pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 in this kernel")


def test_two_proxies_on_ipv6_loopback(layer):
    server = socket.create_server(("::1", 0), family=socket.AF_INET6)
    port = server.getsockname()[1]
    got = {}

    def echo():
        c, _ = server.accept()
        h = hashlib.sha256()
        with c:
            while (b := c.recv(65536)):
                h.update(b)
                c.sendall(b)
        got["digest"] = h.digest()

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    data = os.urandom(1 << 20)
    with wfpr.Proxy(layer, "v6-av", ports=port, weight=2, host="::1") as av, \
            wfpr.Proxy(layer, "v6-dlp", ports=port, weight=1, host="::1") as dlp:
        c = socket.socket(socket.AF_INET6)
        wfpr.connect(c, ("::1", port))
        sender = threading.Thread(target=lambda: (c.sendall(data), c.shutdown(socket.SHUT_WR)))
        sender.start()
        echoed = bytearray()
        while (b := c.recv(65536)):
            echoed += b
        sender.join()
        c.close()
    t.join(5)
    server.close()
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest() == got["digest"]
    assert len(av.connections) == 1 and len(dlp.connections) == 1, (av.errors, dlp.errors)
    records = dlp.connections[0].records
    assert [h.redirector for h in records] == ["v6-av", "v6-dlp"]
    assert records.original_destination == ("::1", port)
    assert records[1].target == dlp.address
