"""A redirect service (a transparent TCP proxy) in a background thread.

    with wfpr.Layer() as layer, wfpr.Proxy(layer, "antivirus", ports=8080) as av:
        ...  # connections to port 8080 made through wfpr.connect pass through av

With the preload backend, the layer is the broker's (`wfpr broker`), and the
proxy joins the chain of unmodified programs run with the shim:

    with wfpr.Proxy(None, "dlp", broker="/run/wfpr/broker.sock", inspect=scan) as dlp:
        ...

Each connection it accepts: QUERY the record and the context, SET the record
on a new socket, connect to the original destination (the layer does not
redirect it back), and relay both ways. ``inspect`` may look at (and
replace) each chunk.
"""
from __future__ import annotations

import selectors
import socket
import threading
from dataclasses import dataclass, field
from typing import Callable, List, Optional

from . import _wfpr
from .layer import PERMIT, Layer, Redirect
from .records import Address, RedirectRecords
from .sockets import close, connect, original_destination, query_redirect_records, set_redirect_records

Inspect = Callable[[bytes, str], Optional[bytes]]  # (chunk, "up" | "down") -> chunk to send


@dataclass
class ProxiedConnection:
    records: RedirectRecords
    original_dst: Address
    bytes_up: int = 0
    bytes_down: int = 0
    error: Optional[str] = None


@dataclass
class _Relay:
    sides: tuple
    done: threading.Event = field(default_factory=threading.Event)


class Proxy:
    def __init__(self, layer: Optional[Layer], name: str, *, ports=None, remote: Optional[str] = None,
                 weight: int = 0, host: str = "127.0.0.1", inspect: Optional[Inspect] = None,
                 buffer_size: int = 256 * 1024, broker: Optional[str] = None):
        if (layer is None) == (broker is None):
            raise ValueError("give a Layer (the inproc backend) or broker= (the preload backend), not both")
        self.layer = layer
        self.name = name
        self.inspect = inspect
        self.buffer_size = buffer_size
        self.connections: List[ProxiedConnection] = []
        self.errors: List[str] = []
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, 0), family=family, backlog=128)
        self.address: Address = self._listener.getsockname()[:2]
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
        self._lock = threading.Lock()
        if broker is not None:
            # the broker's layer redirects everything to each registered proxy in turn; this
            # process's own sockets (the proxy's outbound ones) go through the broker too
            _wfpr.preload_attach(broker)
            self.redirector_id: bytes = _wfpr.preload_register(name, self.address[0], self.address[1])
            self.filter_id = None
            return
        self.redirector = layer.redirector(name)
        self.filter_id = layer.add_callout(self._classify, redirector=self.redirector, name=name, protocol="tcp",
                                           ports=ports, remote=remote, weight=weight)

    def _classify(self, request) -> object:
        return PERMIT if request.mine else Redirect(self.address)

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> "Proxy":
        t = threading.Thread(target=self._accept_loop, name=f"wfpr-proxy-{self.name}", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for t in list(self._threads):
            t.join(timeout)
        self._listener.close()
        if self.layer is not None:
            self.layer.remove_filter(self.filter_id)
        # (a preload registration lasts as long as this process's broker connection)

    def __enter__(self) -> "Proxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Proxy {self.name!r} on {self.address[0]}:{self.address[1]}, {len(self.connections)} connection(s)>"

    # -- the service -------------------------------------------------------------
    def _accept_loop(self) -> None:
        self._listener.settimeout(0.05)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            t = threading.Thread(target=self._serve, args=(client,), daemon=True)
            t.start()
            with self._lock:
                self._threads.append(t)

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        conn = None
        try:
            records = RedirectRecords(query_redirect_records(client))
            conn = ProxiedConnection(records, original_destination(client))
            with self._lock:
                self.connections.append(conn)
            upstream = socket.socket(socket.AF_INET6 if ":" in conn.original_dst[0] else socket.AF_INET)
            set_redirect_records(upstream, records.blob)
            connect(upstream, conn.original_dst)
            self._relay(client, upstream, conn)
        except Exception as e:  # one connection's failure never stops the proxy
            with self._lock:
                self.errors.append(f"{type(e).__name__}: {e}")
            if conn:
                conn.error = str(e)
        finally:
            for s in (client, upstream):
                if s is not None:
                    close(s)

    def _relay(self, client: socket.socket, upstream: socket.socket, conn: ProxiedConnection) -> None:
        sel = selectors.DefaultSelector()
        peers = {client: (upstream, "up"), upstream: (client, "down")}
        for s in peers:
            sel.register(s, selectors.EVENT_READ)
        open_ends = 2
        while open_ends and not self._stop.is_set():
            for key, _ in sel.select(timeout=0.1):
                src = key.fileobj
                dst, direction = peers[src]
                try:
                    chunk = src.recv(self.buffer_size)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    sel.unregister(src)
                    open_ends -= 1
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    continue
                if self.inspect is not None:
                    chunk = self.inspect(chunk, direction)
                    if chunk is None:
                        continue
                dst.sendall(chunk)
                if direction == "up":
                    conn.bytes_up += len(chunk)
                else:
                    conn.bytes_down += len(chunk)
        sel.close()
