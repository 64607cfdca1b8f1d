"""Fixtures: a layer attached to this process, real loopback servers, and a
redirector whose proxy is the test itself (it accepts and QUERYs by hand)."""
import hashlib
import socket
import threading

import pytest

import wfpr

UNUSED_PORT = 9  # discard: nothing listens; connects to it are redirected


@pytest.fixture
def layer():
    with wfpr.Layer() as layer:
        yield layer


class ManualRedirector:
    """Redirects TCP connections for `port` to a listening socket the test owns."""

    def __init__(self, layer, name, port=UNUSED_PORT, weight=0, protocol="tcp"):
        self.redirector = layer.redirector(name)
        kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
        self.listener = socket.socket(socket.AF_INET, kind)
        self.listener.bind(("127.0.0.1", 0))
        if protocol == "tcp":
            self.listener.listen(64)
        self.address = self.listener.getsockname()
        self.states = []
        layer.add_callout(self.classify, redirector=self.redirector, protocol=protocol, ports=port, weight=weight)

    def classify(self, req):
        self.states.append(req.state)
        return wfpr.PERMIT if req.mine else wfpr.Redirect(self.address)


@pytest.fixture
def manual(layer):
    m = ManualRedirector(layer, "manual")
    yield m
    m.listener.close()


@pytest.fixture
def redirected(manual):
    """(client, accepted): a connection to UNUSED_PORT redirected to `manual`."""
    pairs = []

    def make():
        client = socket.socket()
        wfpr.connect(client, ("127.0.0.1", UNUSED_PORT))
        accepted, _ = manual.listener.accept()
        pairs.append((client, accepted))
        return client, accepted

    yield make
    for c, a in pairs:
        c.close()
        a.close()


class EchoServer:
    """Echoes every byte of each connection and keeps the SHA-256 of what it got."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.address = self.sock.getsockname()
        self.port = self.address[1]
        self.digests = []
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.sock.settimeout(0.05)
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        h = hashlib.sha256()
        with c:
            while True:
                try:
                    b = c.recv(65536)
                except ConnectionResetError:
                    break
                if not b:
                    break
                h.update(b)
                c.sendall(b)
        self.digests.append(h.hexdigest())

    def close(self):
        self._stop = True
        self.thread.join()
        self.sock.close()


@pytest.fixture
def echo():
    s = EchoServer()
    yield s
    s.close()


def echo_roundtrip(address, data):
    """Connect through the layer, send data, read the echo; returns the echo."""
    c = socket.socket()
    wfpr.connect(c, address)
    sender = threading.Thread(target=lambda: (c.sendall(data), c.shutdown(socket.SHUT_WR)))
    sender.start()
    got = bytearray()
    while True:
        b = c.recv(65536)
        if not b:
            break
        got += b
    sender.join()
    c.close()
    return bytes(got)
