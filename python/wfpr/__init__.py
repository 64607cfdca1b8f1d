"""wfpr: the Windows Filtering Platform connection-redirect model on Linux.

Cooperating transparent proxies, each with its own redirector, see every
connection exactly once: a redirect record travels with the connection and
the layer's redirect state stops loops.

    import wfpr
    records = wfpr.query_redirect_records(accepted_socket)
    wfpr.set_redirect_records(outbound_socket, records)
"""
from typing import Optional, Tuple

from . import _wfpr
from . import aio, errors
from ._wfpr import Overlapped
from .errors import *  # noqa: F401,F403 - one exception class per code
from .errors import InsufficientBufferError, WSAError, from_code
from .layer import BLOCK, PERMIT, ConnectRequest, Layer, Redirect, Redirector
from .proxy import ProxiedConnection, Proxy
from .records import Hop, Process, RedirectRecords, RedirectState
from .sockets import (
    SIO_FLUSH, SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT, SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS,
    SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, Datagram, SocketLike, annotate, close, connect, decode_context, flush,
    ioctl,
    original_destination, query_redirect_context, query_redirect_records, recvfrom, recvmsg, sendmsg, sendto,
    set_overlapped, set_redirect_records, want_context)

__version__: str = _wfpr.VERSION  # the C library's (core/include/wfpr/common.h), as `wfpr --version` says


def ebpf_attach(on: bool = True) -> None:
    """Use the eBPF backend in this process: it runs inside the cgroup that
    `wfpr run --backend ebpf` made, so the kernel redirects its connects, and
    QUERY and SET (``query_redirect_records``, ``set_redirect_records``...)
    go to the BPF programs (docs/ebpf.md). ``ebpf_attach(False)`` turns it off."""
    _wfpr.ebpf_attach(1 if on else 0)


def add_redirector(name: str, listen: Tuple[str, int], *, pid: Optional[int] = None, cgroup: Optional[str] = None,
                   weight: int = 100, match: str = "", daemon: Optional[str] = None) -> bytes:
    """Register an unmodified transparent proxy (haproxy, mitmproxy: one
    written for netfilter REDIRECT) with a running ``wfpr daemon``, as
    ``wfpr redirector add`` does (docs/unmodified-proxies.md). ``listen`` is
    its ("127.0.0.1", port); ``pid`` its process, or ``cgroup`` the cgroup of
    its processes. Returns its 16-byte redirector id."""
    if (pid is None) == (cgroup is None):
        raise ValueError("give the proxy's pid or its cgroup, one of them")
    host, port = listen
    return _wfpr.daemon_add_redirector(daemon, name, weight, match, host, port, pid or 0, cgroup)


def remove_redirector(name: str, *, daemon: Optional[str] = None) -> None:
    """Remove an unmodified proxy that ``add_redirector`` registered."""
    _wfpr.daemon_remove_redirector(daemon, name)


def ebpf_available(sock: SocketLike) -> bool:
    """True when the eBPF backend's programs answer on this socket (or fd)."""
    return bool(_wfpr.ebpf_available(sock if isinstance(sock, int) else sock.fileno()))


RECORD_MAX_HOPS = _wfpr.RECORD_MAX_HOPS
RECORD_MAX_SIZE = _wfpr.RECORD_MAX_SIZE

# what `from wfpr import *` and `pydoc wfpr` show: the API, not its imports
__all__ = [
    "__version__", "RECORD_MAX_HOPS", "RECORD_MAX_SIZE",
    # the layer, the proxies, the records
    "Layer", "Redirector", "Redirect", "ConnectRequest", "PERMIT", "BLOCK", "Proxy", "ProxiedConnection",
    "RedirectRecords", "RedirectState", "Hop", "Process",
    # the IOCTLs and sockets
    "SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS", "SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT",
    "SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS", "SIO_FLUSH", "SocketLike", "Overlapped", "Datagram", "ioctl",
    "query_redirect_records", "query_redirect_context", "set_redirect_records", "original_destination",
    "decode_context", "connect", "sendto", "sendmsg", "recvmsg", "recvfrom", "want_context", "set_overlapped",
    "annotate", "flush", "close", "aio",
    # the backends
    "ebpf_attach", "ebpf_available", "add_redirector", "remove_redirector",
    # errors: one class per code
    *errors.__all__,
]
