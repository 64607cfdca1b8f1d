"""asyncio awaitables for the overlapped QUERY operations.

    records = await wfpr.aio.query_redirect_records(sock)

The QUERY is started overlapped; if the record has not reached the layer
yet, the coroutine waits on the operation's event descriptor in the running
loop. Cancelling the coroutine aborts the operation with SIO_FLUSH.
"""
from __future__ import annotations

import asyncio

from . import _wfpr
from .errors import InsufficientBufferError
from .sockets import (SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT, SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, SocketLike, _fd, flush,
                      set_overlapped)

_INITIAL_SIZE = 1024


async def _wait(op: "_wfpr.Overlapped") -> None:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    fd = op.event_fd()

    def ready() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await done
    finally:
        loop.remove_reader(fd)


async def overlapped_ioctl(sock: SocketLike, code: int, out_len: int) -> bytes:
    """One overlapped WSAIoctl: returns the bytes or raises its WSAError."""
    fd = _fd(sock)
    set_overlapped(fd)
    op = _wfpr.Overlapped()
    status = op.start(fd, code, out_len)
    if status == _wfpr.WSA_IO_PENDING:
        try:
            await _wait(op)
        except asyncio.CancelledError:
            flush(fd)  # completes it with WSA_OPERATION_ABORTED
            raise
    return op.result()


async def _query(sock: SocketLike, code: int, size: int) -> bytes:
    try:
        return await overlapped_ioctl(sock, code, size)
    except InsufficientBufferError as e:
        return await overlapped_ioctl(sock, code, e.required_size)


async def query_redirect_records(sock: SocketLike, *, size: int = _INITIAL_SIZE) -> bytes:
    """Await the accepted socket's redirect record."""
    return await _query(sock, SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, size)


async def query_redirect_context(sock: SocketLike, *, size: int = 2 * 128) -> bytes:
    """Await the accepted socket's redirect context."""
    return await _query(sock, SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT, size)


__all__ = ["query_redirect_records", "query_redirect_context", "overlapped_ioctl"]
