"""The redirect layer from Python: redirectors, filters and Python callouts."""
from __future__ import annotations

import html
import ipaddress
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from . import _wfpr
from .records import Address, RedirectState, _redirector_names

log = logging.getLogger("wfpr")

PERMIT = "permit"
BLOCK = "block"

_PROTOCOLS = {None: 0, 0: 0, "tcp": 6, "udp": 17, 6: 6, 17: 17}


@dataclass(frozen=True)
class Redirect:
    """A callout's verdict: connect to ``to`` (a local proxy) instead."""

    to: Address
    target_pid: int = 0
    context: Optional[bytes] = None


Verdict = Union[str, Redirect, None]


@dataclass(frozen=True)
class ConnectRequest:
    """What a callout sees of a connect (or of a new UDP flow)."""

    protocol: str
    remote: Address
    local: Optional[Address]
    pid: int
    uid: int
    hop_count: int
    state: RedirectState
    redirector: Optional["Redirector"] = None

    @property
    def mine(self) -> bool:
        """True when this callout's redirector may not redirect it again (the
        redirect-state rule, wfpr_redirect_state_allows_redirect)."""
        return not _wfpr.redirect_state_allows_redirect(int(self.state))


class Redirector:
    """One cooperating redirector: a redirect handle of its layer."""

    def __init__(self, layer: "Layer", name: str, id: Optional[bytes] = None):
        self.layer = layer
        self.name = name
        self._handle = layer._layer.handle_create(id, name)
        self.id: bytes = self._handle.redirector_id()
        self.number: int = self._handle.handle_number()
        _redirector_names[self.id] = name

    def __repr__(self) -> str:
        return f"<Redirector {self.name!r} #{self.number} {self.id.hex()[:8]}…>"


@dataclass
class _Filter:
    id: int
    name: str
    callout: str
    redirector: Optional[Redirector]
    weight: int
    conditions: Dict[str, Any]
    errors: int = 0


def _parse_prefix(remote: Optional[str]) -> Tuple[str, int]:
    if not remote:
        return "", 0
    net = ipaddress.ip_network(remote, strict=False)
    return str(net.network_address), net.prefixlen


Ports = Union[None, int, range, Tuple[int, int]]


def _parse_ports(ports: Ports) -> Tuple[int, int]:
    if ports is None:
        return 0, 0
    if isinstance(ports, int):
        return ports, ports
    if isinstance(ports, range):
        return ports.start, ports.stop - 1
    lo, hi = ports
    return lo, hi


class Layer:
    """A redirect layer: filters point at callouts; callouts permit, block or
    redirect. Use it as a context manager to attach it to this process's
    in-process backend::

        with wfpr.Layer() as layer:
            av = layer.redirector("antivirus")
            layer.add_callout(lambda req: wfpr.Redirect(proxy_addr), redirector=av, ports=443)
    """

    def __init__(self) -> None:
        self._layer = _wfpr.layer()
        self.redirectors: List[Redirector] = []
        self.filters: List[_Filter] = []
        self._callouts: List[Callable[[Dict[str, Any]], object]] = []  # kept alive with the layer
        self._lock = threading.Lock()
        self.callout_errors = 0

    # -- redirectors and filters ------------------------------------------------
    def redirector(self, name: str, id: Optional[bytes] = None) -> Redirector:
        """A new redirector (FwpsRedirectHandleCreate); ``id`` is its 16-byte provider id."""
        r = Redirector(self, name, id)
        self.redirectors.append(r)
        return r

    def add_callout(self, callout: Any, *, redirector: Optional[Redirector] = None, name: Optional[str] = None,
                    protocol: Union[str, int, None] = None, remote: Optional[str] = None, ports: Ports = None,
                    local_port: int = 0, pid: Optional[int] = None, uid: Optional[int] = None,
                    weight: int = 0, default: Verdict = PERMIT) -> int:
        """Register ``callout`` (a function of a ConnectRequest, or an object
        with a ``classify`` method) behind a filter; returns the filter id.

        The callout returns ``wfpr.PERMIT`` (or None), ``wfpr.BLOCK``, or a
        ``wfpr.Redirect``. If it raises, the error is logged once per filter,
        counted in ``callout_errors``, and ``default`` applies.
        """
        fn = getattr(callout, "classify", callout)
        if not callable(fn):
            raise TypeError("callout must be callable or have a classify method")
        label = name or str(getattr(fn, "__name__", type(callout).__name__))
        entry = _Filter(0, label, label, redirector, weight,
                        {"protocol": protocol, "remote": remote, "ports": ports, "local_port": local_port,
                         "pid": pid, "uid": uid})
        dispatch = self._dispatcher(fn, redirector, entry, default)
        callout_id = self._layer.callout_register(label, dispatch, redirector._handle if redirector else None)
        prefix, prefix_len = _parse_prefix(remote)
        lo, hi = _parse_ports(ports)
        entry.id = self._layer.filter_add(callout_id, weight, _PROTOCOLS[protocol], prefix, prefix_len, lo, hi,
                                          local_port, -1 if pid is None else pid, -1 if uid is None else uid, label)
        with self._lock:
            self._callouts.append(dispatch)
            self.filters.append(entry)
        return entry.id

    def remove_filter(self, filter_id: int) -> None:
        self._layer.filter_remove(filter_id)
        with self._lock:
            self.filters = [f for f in self.filters if f.id != filter_id]

    def _dispatcher(self, fn: Callable[[ConnectRequest], Verdict], redirector: Optional[Redirector], entry: _Filter,
                    default: Verdict) -> Callable[[Dict[str, Any]], object]:
        def dispatch(info: Dict[str, Any]) -> object:
            request = ConnectRequest(protocol={6: "tcp", 17: "udp"}.get(info["protocol"], str(info["protocol"])),
                                     remote=info["remote"], local=info["local"], pid=info["pid"], uid=info["uid"],
                                     hop_count=info["hop_count"], state=RedirectState(info["state"]),
                                     redirector=redirector)
            try:
                return _encode(fn(request))
            except Exception:  # a failing callout never takes the layer down
                with self._lock:
                    self.callout_errors += 1
                    entry.errors += 1
                    first = entry.errors == 1
                if first:
                    log.exception("callout %r failed; applying the default verdict %r", entry.name, default)
                return _encode(default)
        return dispatch

    # -- the in-process backend ---------------------------------------------------
    def attach(self) -> "Layer":
        _wfpr.inproc_attach(self._layer)
        return self

    def detach(self) -> None:
        _wfpr.inproc_detach(self._layer)

    def __enter__(self) -> "Layer":
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    @property
    def stats(self) -> Dict[str, int]:
        s = self._layer.stats_snapshot()
        return {k: getattr(s, k) for k in
                ("classified", "redirected", "blocked", "refused_redirects", "hop_limit", "bad_records")}

    def __repr__(self) -> str:
        return f"<Layer {len(self.redirectors)} redirector(s), {len(self.filters)} filter(s), {self.stats}>"

    def _repr_html_(self) -> str:
        esc = html.escape
        reds = "".join(f"<tr><td>{r.number}</td><td>{esc(r.name)}</td><td><code>{r.id.hex()}</code></td></tr>"
                       for r in self.redirectors)
        def cond(f: _Filter) -> str:
            return ", ".join(f"{k}={v}" for k, v in f.conditions.items() if v not in (None, 0)) or "any"
        fils = "".join(
            f"<tr><td>{f.id}</td><td>{esc(f.name)}</td><td>{f.weight}</td>"
            f"<td>{esc(f.redirector.name) if f.redirector else ''}</td><td>{esc(cond(f))}</td><td>{f.errors}</td></tr>"
            for f in sorted(self.filters, key=lambda f: -f.weight))
        stats = ", ".join(f"{k}: {v}" for k, v in self.stats.items())
        return ("<div><b>wfpr layer</b>"
                f"<table><caption>redirectors</caption><tr><th>#</th><th>name</th><th>id</th></tr>{reds}</table>"
                f"<table><caption>filters (evaluated by weight)</caption><tr><th>id</th><th>callout</th>"
                f"<th>weight</th><th>redirector</th><th>conditions</th><th>errors</th></tr>{fils}</table>"
                f"<p>{esc(stats)}</p></div>")


def _encode(verdict: Verdict) -> object:
    """A verdict in the form the C trampoline reads."""
    if verdict is None or verdict == PERMIT:
        return None
    if verdict == BLOCK:
        return _wfpr.ACTION_BLOCK
    if isinstance(verdict, Redirect):
        host, port = verdict.to
        return (_wfpr.ACTION_REDIRECT, host, port, verdict.target_pid or os.getpid(), verdict.context)
    raise TypeError(f"a callout returned {verdict!r}; expected wfpr.PERMIT, wfpr.BLOCK or wfpr.Redirect")
