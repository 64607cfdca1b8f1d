"""asyncio awaitables for the overlapped QUERY: done at once, pending then
completed, pending then aborted."""
import asyncio
import socket

import pytest

import wfpr
from conftest import UNUSED_PORT


def pending_pair(manual):
    """A connection accepted before its non-blocking connect was completed by
    the client: its record has not reached the layer yet."""
    client = socket.socket()
    client.setblocking(False)
    with pytest.raises(wfpr.WouldBlockError):
        wfpr.connect(client, ("127.0.0.1", UNUSED_PORT))
    accepted, _ = manual.listener.accept()
    return client, accepted


def finish(client):
    import select
    select.select([], [client], [], 5)
    wfpr.connect(client, ("127.0.0.1", UNUSED_PORT))


def test_done_at_once(redirected):
    _, accepted = redirected()
    got = asyncio.run(wfpr.aio.query_redirect_records(accepted))
    assert got == wfpr.query_redirect_records(accepted)


def test_pending_then_completed(manual):
    client, accepted = pending_pair(manual)

    async def main():
        task = asyncio.create_task(wfpr.aio.query_redirect_records(accepted, size=8))  # too small: retried
        await asyncio.sleep(0.05)
        assert not task.done()  # really pending
        finish(client)
        return await asyncio.wait_for(task, 5)

    blob = asyncio.run(main())
    assert wfpr.RedirectRecords.parse(blob)[0].redirector == "manual"
    assert wfpr.decode_context(asyncio.run(wfpr.aio.query_redirect_context(accepted)))[0][1] == UNUSED_PORT
    client.close()
    accepted.close()


def test_pending_then_aborted_by_flush(manual):
    client, accepted = pending_pair(manual)

    async def main():
        task = asyncio.create_task(wfpr.aio.query_redirect_records(accepted))
        await asyncio.sleep(0.05)
        wfpr.flush(accepted)
        with pytest.raises(wfpr.OperationAbortedError):
            await asyncio.wait_for(task, 5)

    asyncio.run(main())
    finish(client)
    client.close()
    accepted.close()


def test_cancelling_aborts_the_operation(manual):
    client, accepted = pending_pair(manual)

    async def main():
        task = asyncio.create_task(wfpr.aio.query_redirect_records(accepted))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    finish(client)
    # the socket is still usable afterwards
    assert wfpr.RedirectRecords.parse(wfpr.query_redirect_records(accepted))
    client.close()
    accepted.close()


def test_pending_then_client_gives_up(manual):
    client, accepted = pending_pair(manual)

    async def main():
        task = asyncio.create_task(wfpr.aio.query_redirect_records(accepted))
        await asyncio.sleep(0.05)
        wfpr.close(client)  # closesocket before completing the connect
        with pytest.raises(wfpr.NotFoundError):
            await asyncio.wait_for(task, 5)

    asyncio.run(main())
    accepted.close()


def test_low_level_overlapped_ioctl(manual):
    """The raw WSAIoctl shape: WSA_IO_PENDING, WSA_IO_INCOMPLETE, then the result."""
    import select
    client, accepted = pending_pair(manual)
    wfpr.set_overlapped(accepted)
    ov = wfpr.Overlapped()
    with pytest.raises(wfpr.IOPendingError):
        wfpr.ioctl(accepted, wfpr.SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, 1024, overlapped=ov)
    with pytest.raises(wfpr.IOIncompleteError):
        ov.result()
    finish(client)
    assert select.select([ov.event_fd()], [], [], 5)[0]
    assert ov.result() == wfpr.query_redirect_records(accepted)
    # on a socket without the overlapped attribute, ov is ignored: synchronous
    with socket.socket() as c2:
        wfpr.connect(c2, ("127.0.0.1", UNUSED_PORT))
        a2, _ = manual.listener.accept()
        with a2:
            assert wfpr.ioctl(a2, wfpr.SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, 1024, overlapped=wfpr.Overlapped())
    client.close()
    accepted.close()
