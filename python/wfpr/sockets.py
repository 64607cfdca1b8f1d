"""The redirect-record IOCTLs and the in-process backend on plain sockets.

Every function takes a ``socket.socket`` (or anything with ``fileno()``, or
a descriptor number). Failures raise ``wfpr.WSAError`` subclasses.
"""
from __future__ import annotations

import socket as _socket
import struct
from typing import NamedTuple, Optional, Protocol, Tuple, Union

from . import _wfpr
from ._wfpr import Overlapped
from .errors import InsufficientBufferError, from_code
from .records import Address

SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS = _wfpr.SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS
SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT = _wfpr.SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT
SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS = _wfpr.SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS
SIO_FLUSH = _wfpr.SIO_FLUSH


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


SocketLike = Union[int, _HasFileno]  # a socket.socket, anything with fileno(), or a descriptor


def _fd(sock: SocketLike) -> int:
    return sock if isinstance(sock, int) else sock.fileno()


def ioctl(sock: SocketLike, code: int, out_len: int = 0, in_: Optional[bytes] = None, *, null_out: bool = False,
          overlapped: Optional["Overlapped"] = None) -> bytes:
    """WSAIoctl, as the C library implements it, for exploring its exact
    semantics: returns the output bytes, or raises (``out_len=0`` is the size
    probe and raises ``InsufficientBufferError`` with ``required_size``).
    ``null_out`` passes a NULL output pointer with ``out_len``.

    With ``overlapped`` (a ``wfpr.Overlapped``) on an overlapped socket (see
    ``set_overlapped``), a QUERY that cannot finish at once raises
    ``IOPendingError``, as WSAIoctl returns WSA_IO_PENDING; the result comes
    later from ``overlapped.result()``, once ``overlapped.event_fd()`` is readable."""
    if overlapped is None:
        return _wfpr.ioctl(_fd(sock), code, in_, out_len, null_out)
    if overlapped.start(_fd(sock), code, out_len) == _wfpr.WSA_IO_PENDING:
        raise from_code(_wfpr.WSA_IO_PENDING)
    return overlapped.result()


_FIRST_TRY = 1024  # the reference page's suggestion; most records fit


def _query(sock: SocketLike, code: int) -> bytes:
    fd = _fd(sock)
    try:
        return _wfpr.ioctl(fd, code, None, _FIRST_TRY, False)
    except InsufficientBufferError as e:  # grow to the size the call reported
        return _wfpr.ioctl(fd, code, None, e.required_size, False)


def query_redirect_records(sock: SocketLike) -> bytes:
    """SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS on an accepted (or connected)
    socket: the opaque record. It asks with a 1 KiB buffer and, when the
    record is larger, again with the size the first call reported."""
    return _query(sock, SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS)


def query_redirect_context(sock: SocketLike) -> bytes:
    """SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT: the redirector's context
    (by default the original remote and local address; see ``decode_context``)."""
    return _query(sock, SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT)


def set_redirect_records(sock: SocketLike, blob: bytes) -> None:
    """SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS on an outbound socket, before it connects."""
    ioctl(sock, SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, 0, bytes(blob))


def annotate(sock: SocketLike, key: str, value: str) -> None:
    """Annotate the connection this proxy passes on: after
    ``set_redirect_records`` and before the connect, ``key=value`` goes into
    the record of the redirect the connect makes, where later proxies read
    it as ``hop.annotations`` of this proxy's hop. A key is 1 to 32 of
    ``A-Za-z0-9_.-``, a value at most 48 printable ASCII characters; at most 8
    pairs and 64 bytes (2 + key + value each)."""
    _wfpr.annotate(_fd(sock), key, value)


def flush(sock: SocketLike) -> None:
    """SIO_FLUSH: abort the socket's pending overlapped operations."""
    ioctl(sock, SIO_FLUSH, 0)


_SOCKADDR_STORAGE = 128


def _sockaddr(raw: bytes) -> Optional[Address]:
    family = struct.unpack_from("=H", raw)[0]
    if family == _socket.AF_INET:
        port, = struct.unpack_from("!H", raw, 2)
        return _socket.inet_ntop(_socket.AF_INET, raw[4:8]), port
    if family == _socket.AF_INET6:
        port, = struct.unpack_from("!H", raw, 2)
        return _socket.inet_ntop(_socket.AF_INET6, raw[8:24]), port
    return None


def decode_context(blob: bytes) -> Tuple[Optional[Address], Optional[Address]]:
    """The default context: (original remote, original local)."""
    if len(blob) != 2 * _SOCKADDR_STORAGE:
        raise ValueError("not a default context (two sockaddr_storage)")
    return _sockaddr(blob[:_SOCKADDR_STORAGE]), _sockaddr(blob[_SOCKADDR_STORAGE:])


def original_destination(sock: SocketLike) -> Address:
    """Where a redirected connection was going, from its default context."""
    remote, _ = decode_context(query_redirect_context(sock))
    if remote is None:
        raise ValueError("the context names no destination")
    return remote


# -- the in-process backend ----------------------------------------------------
def connect(sock: SocketLike, address: Address) -> None:
    """connect() through the attached layer (it may be redirected). The GIL
    is released while it runs, callouts included."""
    host, port = address
    _wfpr.connect(_fd(sock), host, port)


def sendto(sock: SocketLike, data: bytes, address: Address) -> int:
    host, port = address
    return _wfpr.sendto(_fd(sock), data, host, port)


def sendmsg(sock: SocketLike, data: bytes, address: Address, records: Optional[bytes] = None) -> int:
    """WSASendMsg: with ``records``, the datagram carries IP_WFP_REDIRECT_RECORDS
    (a UDP proxy passes its flow's records on with the first datagram)."""
    host, port = address
    return _wfpr.sendmsg(_fd(sock), data, host, port, records)


class Datagram(NamedTuple):
    data: bytes
    address: Optional[Address]
    records: Optional[bytes]  # IP_WFP_REDIRECT_RECORDS, on a flow's first datagram only
    context: Optional[bytes]  # IP_WFP_REDIRECT_CONTEXT, when asked for with want_context


def recvmsg(sock: SocketLike, bufsize: int = 65536) -> Datagram:
    """WSARecvMsg with the redirect control messages (GIL released while waiting)."""
    return Datagram(*_wfpr.recvmsg(_fd(sock), bufsize))


def recvfrom(sock: SocketLike, bufsize: int = 65536) -> Tuple[bytes, Optional[Address]]:
    """recvfrom that shows replies from the original destination, not the proxy."""
    d = recvmsg(sock, bufsize)
    return d.data, d.address


def want_context(sock: SocketLike, on: bool = True) -> None:
    """Ask for IP_WFP_REDIRECT_CONTEXT with each flow's first datagram (UDP)."""
    _wfpr.set_want_context(_fd(sock), on)


def set_overlapped(sock: SocketLike, on: bool = True) -> None:
    """Give the socket the overlapped attribute (WSA_FLAG_OVERLAPPED)."""
    _wfpr.socket_set_overlapped(_fd(sock), int(on))


def close(sock: SocketLike) -> None:
    """closesocket: aborts the socket's pending overlapped operations, then closes it."""
    fd = sock.detach() if isinstance(sock, _socket.socket) else _fd(sock)
    _wfpr.closesocket(fd)
