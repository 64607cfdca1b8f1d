"""Redirect records for people: a blob decoded into hops."""
from __future__ import annotations

import datetime as _dt
import html
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Dict, Iterator, Mapping, Optional, Tuple

from . import _wfpr

if TYPE_CHECKING:
    from .layer import Redirector

Address = Tuple[str, int]

# Redirector ids to names, filled in by wfpr.Layer.redirector(), so that a
# record shows "antivirus" rather than 32 hex digits.
_redirector_names: Dict[bytes, str] = {}


class RedirectState(IntEnum):
    """FWPS_CONNECTION_REDIRECT_STATE, same values."""

    NOT_REDIRECTED = _wfpr.CONNECTION_NOT_REDIRECTED
    REDIRECTED_BY_SELF = _wfpr.CONNECTION_REDIRECTED_BY_SELF
    REDIRECTED_BY_OTHER = _wfpr.CONNECTION_REDIRECTED_BY_OTHER
    PREVIOUSLY_REDIRECTED_BY_SELF = _wfpr.CONNECTION_PREVIOUSLY_REDIRECTED_BY_SELF


def _fmt(addr: Optional[Address]) -> str:
    if not addr:
        return "-"
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Process:
    """The process that made a redirected connection (a hop's PROCESS
    attribute). ``exe`` is "" where the layer could not name the path."""

    pid: int
    uid: int
    name: str
    exe: str


@dataclass(frozen=True)
class Hop:
    """One redirect in a connection's history."""

    redirector_id: bytes
    handle: int
    proxy_pid: int
    protocol: str
    original_remote: Address
    original_local: Address
    target: Address
    time_ns: int
    token: bytes
    process: Optional[Process] = None
    #: what this hop's proxy said when it passed the connection on
    #: (``wfpr.annotate``; empty for the newest hop)
    annotations: Mapping[str, str] = field(default_factory=dict, hash=False)

    @classmethod
    def _from_dict(cls, d: Dict[str, Any]) -> "Hop":
        return cls(redirector_id=d["redirector_id"], handle=d["handle"], proxy_pid=d["proxy_pid"],
                   protocol={6: "tcp", 17: "udp"}.get(d["protocol"], str(d["protocol"])),
                   original_remote=d["original_remote"], original_local=d["original_local"],
                   target=d["target"], time_ns=d["time_ns"], token=d["token"],
                   process=Process(**d["process"]) if d.get("process") else None,
                   annotations=dict(d.get("annotations") or {}))

    @property
    def redirector(self) -> str:
        """The redirector's name where this process knows it, else its id in hex."""
        return _redirector_names.get(self.redirector_id, self.redirector_id.hex())

    @property
    def time(self) -> _dt.datetime:
        return _dt.datetime.fromtimestamp(self.time_ns / 1e9, tz=_dt.timezone.utc)

    def __str__(self) -> str:
        return (f"{self.redirector}: {self.protocol} {_fmt(self.original_local)} -> "
                f"{_fmt(self.original_remote)} sent to {_fmt(self.target)}")


class RedirectRecords:
    """A decoded redirect record. ``RedirectRecords.parse(blob)`` raises
    ``wfpr.InvalidArgumentError`` for a malformed blob; it never crashes."""

    __slots__ = ("blob", "hops")

    def __init__(self, blob: bytes):
        self.blob = bytes(blob)
        self.hops: Tuple[Hop, ...] = tuple(Hop._from_dict(d) for d in _wfpr.records_decode(self.blob))

    @classmethod
    def parse(cls, blob: bytes) -> "RedirectRecords":
        return cls(blob)

    def state_for(self, redirector: "Redirector") -> RedirectState:
        """The redirect state of this connection for a redirector of the live
        layer that issued it (the tokens are checked under that layer's key)."""
        return RedirectState(_wfpr.query_redirect_state(self.blob, redirector._handle))

    @property
    def original_destination(self) -> Address:
        return self.hops[0].original_remote

    def __len__(self) -> int:
        return len(self.hops)

    def __iter__(self) -> Iterator[Hop]:
        return iter(self.hops)

    def __getitem__(self, i: int) -> Hop:
        return self.hops[i]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RedirectRecords) and other.blob == self.blob

    def __hash__(self) -> int:
        return hash(self.blob)

    def __repr__(self) -> str:
        chain = " -> ".join(h.redirector for h in self.hops)
        return f"<RedirectRecords {len(self.hops)} hop(s): {chain}; {len(self.blob)} bytes>"

    def _repr_html_(self) -> str:
        rows = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
                i + 1, h.redirector, h.protocol, _fmt(h.original_local), _fmt(h.original_remote),
                _fmt(h.target), h.proxy_pid or "", h.time.strftime("%H:%M:%S.%f")[:-3],
                " ".join(f"{k}={v}" for k, v in h.annotations.items())))
            + "</tr>" for i, h in enumerate(self.hops))
        head = "".join(f"<th>{c}</th>" for c in
                       ("hop", "redirector", "proto", "from", "original destination", "sent to", "proxy pid", "time (UTC)",
                        "annotations"))
        return (f"<table><caption>redirect record: {len(self.hops)} hop(s), {len(self.blob)} bytes</caption>"
                f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
