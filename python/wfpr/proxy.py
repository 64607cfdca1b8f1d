"""A redirect service (a transparent TCP proxy): the C relay engine
(``wfpr/engine.h``) on a background thread.

    with wfpr.Layer() as layer, wfpr.Proxy(layer, "antivirus", ports=8080) as av:
        ...  # connections to port 8080 made through wfpr.connect pass through av

With the preload backend, the layer is the broker's (`wfpr broker`), and the
proxy joins the chain of unmodified programs run with the shim:

    with wfpr.Proxy(None, "dlp", broker="/run/wfpr/broker.sock", inspect=scan) as dlp:
        ...

For each connection it accepts, the engine QUERYs the record and the
context, SETs the record on its outbound socket, connects to the original
destination (the layer does not redirect it back) and relays both ways, in
C and without the GIL. ``inspect(chunk, direction)`` may look at each chunk
(``direction`` is "up" or "down") and return the bytes to send instead, or
None to send nothing; without it, no byte enters Python.
"""
from __future__ import annotations

import dataclasses
import os
import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Literal, Optional, Union

from . import _wfpr
from .layer import PERMIT, ConnectRequest, Layer, Ports, Redirect, Verdict
from .records import Address, Process, RedirectRecords

Inspect = Callable[[bytes, str], Optional[bytes]]  # (chunk, "up" | "down") -> chunk to send


@dataclass
class ProxiedConnection:
    records: RedirectRecords
    original_dst: Address
    bytes_up: int = 0
    bytes_down: int = 0
    error: Optional[str] = None
    process: Optional[Process] = None  # the client (the first hop's process)

    def __post_init__(self) -> None:
        if self.process is None and self.records.hops:
            self.process = _client_process(self.records.hops[0].process)


def _client_process(p: Optional[Process]) -> Optional[Process]:
    """p, with its executable read from /proc where the hop has none (the
    eBPF backend's hops carry no path), while the client still runs."""
    if p is None or p.exe:
        return p
    try:
        return dataclasses.replace(p, exe=os.readlink(f"/proc/{p.pid}/exe"))
    except OSError:
        return p


class Proxy:
    """A transparent TCP proxy that joins the chain as its own redirector.
    ``connections`` lists each connection it took (its records, original
    destination and byte counts once it closed); ``errors`` the exceptions
    that ``inspect`` raised (the chunk then passed unchanged); ``stats`` the
    engine's counters once stopped."""

    def __init__(self, layer: Optional[Layer], name: str, *, ports: Ports = None, remote: Optional[str] = None,
                 weight: int = 0, host: str = "127.0.0.1", inspect: Optional[Inspect] = None,
                 buffer_size: int = 256 * 1024, broker: Optional[str] = None, daemon: Union[None, Literal[True], str] = None,
                 match: str = "", broker_key: Optional[str] = None):
        """``daemon=True`` (or the control socket's path) registers with a
        running ``wfpr daemon`` (the eBPF backend, host-wide): this process
        joins the daemon's cgroup, and ``match`` (``"proto=tcp dport=443"``,
        the text of ``wfpr proxy``'s match options) and ``weight`` choose the
        traffic. ``broker=`` registers with a preload broker, with the same
        ``match``, presenting ``broker_key`` (by default read from the key
        file that ``wfpr broker`` wrote beside its socket); a ``Layer`` is
        the in-process backend."""
        if sum(x is not None for x in (layer, broker, daemon)) != 1:
            raise ValueError("give one of: a Layer (the inproc backend), broker= (preload) or daemon= (eBPF)")
        self._link = None
        self.layer = layer
        self.name = name
        self.inspect = inspect
        self.buffer_size = buffer_size
        self.connections: List[ProxiedConnection] = []
        self.errors: List[str] = []
        self.stats: Dict[str, int] = {}
        self._by_id: Dict[int, ProxiedConnection] = {}
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        handle = None
        control = daemon if isinstance(daemon, str) else None  # True: the default control socket
        if daemon is not None:
            _wfpr.daemon_join(control)  # its sockets must be in the daemon's cgroup
            _wfpr.ebpf_attach(1)
        elif broker is not None:
            # the broker's layer redirects everything to each registered proxy in turn; this
            # process's own sockets (the proxy's outbound ones) go through the broker too
            _wfpr.preload_attach(broker)
            _wfpr.preload_set_key(broker_key)
        elif layer is not None:
            self.redirector = layer.redirector(name)
            handle = self.redirector._handle
        hook = self._inspect if inspect is not None else None
        self._engine: Optional[_wfpr.engine] = _wfpr.engine_new(name, host, 0, handle, None if layer else bytes(16), buffer_size,
                                        self._connected, hook, self._closed)
        host_, port_ = _wfpr.engine_address(self._engine)
        self.address: Address = (host_, port_)
        if daemon is not None:
            self._link = _wfpr.daemon_register(control, name, weight if weight else 100, match,
                                               self.address[0], self.address[1], None, 0)
            self.redirector_id: bytes = _wfpr.daemon_link_id(self._link)
        elif broker is not None:
            # the broker gives the engine's address its redirector id
            self.redirector_id = _wfpr.preload_register(name, self.address[0], self.address[1], weight or 100,
                                                        match)
        if layer is None:
            _wfpr.engine_set_redirector_id(self._engine, self.redirector_id)
            self.filter_id: Optional[int] = None
            return
        self.filter_id = layer.add_callout(self._classify, redirector=self.redirector, name=name, protocol="tcp",
                                           ports=ports, remote=remote, weight=weight)

    def _classify(self, request: ConnectRequest) -> Verdict:
        return PERMIT if request.mine else Redirect(self.address)

    # -- the engine's hooks (on its thread, with the GIL) -------------------------
    def _connected(self, conn_id: int, records: bytes, original_dst: Address) -> None:
        conn = ProxiedConnection(RedirectRecords(records), (original_dst[0], original_dst[1]))
        with self._lock:
            self.connections.append(conn)
            self._by_id[conn_id] = conn

    def _inspect(self, chunk: bytes, direction: str) -> Optional[bytes]:
        if self.inspect is None:
            return None
        try:
            out = self.inspect(chunk, direction)
        except Exception as e:  # one chunk's failure never stops the proxy: it passes unchanged
            with self._lock:
                self.errors.append(f"{type(e).__name__}: {e}")
            return chunk
        return None if out is None else bytes(out)

    def _closed(self, conn_id: int, bytes_up: int, bytes_down: int) -> None:
        with self._lock:
            conn = self._by_id.pop(conn_id, None)
        if conn is not None:
            conn.bytes_up, conn.bytes_down = bytes_up, bytes_down

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> "Proxy":
        if self._thread is None:
            self._thread = threading.Thread(target=_wfpr.engine_run, args=(self._engine,),
                                            name=f"wfpr-proxy-{self.name}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._engine is None:
            return
        _wfpr.engine_stop(self._engine)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return  # still closing: the engine stays allocated
        self.stats = _wfpr.engine_stats(self._engine)
        _wfpr.engine_free(self._engine)
        self._engine = None
        if self.layer is not None and self.filter_id is not None:
            self.layer.remove_filter(self.filter_id)
        if self._link is not None:
            _wfpr.daemon_unregister(self._link)  # new connections skip it from now on
            self._link = None
        # (a preload registration lasts as long as this process's broker connection)

    def __enter__(self) -> "Proxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Proxy {self.name!r} on {self.address[0]}:{self.address[1]}, {len(self.connections)} connection(s)>"
