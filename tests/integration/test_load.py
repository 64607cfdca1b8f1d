"""Load: 1,000 concurrent connections through two proxies, every payload intact."""
import asyncio
import collections
import resource
import threading

import pytest

from itsupport import PY

CLIENT = r"""
import asyncio, hashlib, os, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
port, n = int(sys.argv[1]), int(sys.argv[2])

async def one(i):
    data = os.urandom(4096 + (i * 7919) % 60000)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    writer.write_eof()
    echo = await reader.read()
    writer.close()
    return hashlib.sha256(echo).digest() == hashlib.sha256(data).digest(), len(data)

async def main():
    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    ok = sum(1 for r in results if r is not True and not isinstance(r, BaseException) and r[0])
    bad = [r for r in results if isinstance(r, BaseException)][:3]
    print(ok, sum(r[1] for r in results if not isinstance(r, BaseException)), bad)

asyncio.run(main())
"""


@pytest.fixture
def echo_server():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = asyncio.new_event_loop()
    started = threading.Event()
    state = {}

    async def handle(reader, writer):
        writer.write(await reader.read())
        await writer.drain()
        writer.close()

    async def serve():
        state["server"] = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=2048)
        started.set()

    t = threading.Thread(target=lambda: (loop.run_until_complete(serve()), loop.run_forever()), daemon=True)
    t.start()
    started.wait(10)
    yield state["server"].sockets[0].getsockname()[1]
    loop.call_soon_threadsafe(loop.stop)
    t.join(10)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("workers", [1, 2])
def test_1000_concurrent_through_two(workers, echo_server, rules, wfpr_run):
    n = 1000
    run = wfpr_run([("alpha", rules("alpha")), ("beta", rules("beta"))], [PY, "-c", CLIENT, str(echo_server), str(n)],
                   timeout=300, extra=["--workers", str(workers)])
    assert run.returncode == 0, run.stderr
    ok, total, errors = run.stdout.split(" ", 2)
    proxy_errors = collections.Counter((e["proxy"], e["error"]) for e in run.events("error"))
    assert int(ok) == n, (ok, errors, proxy_errors)
    summary = run.summary()
    for name in ("alpha", "beta"):
        assert summary[name]["connections"] == n
        assert summary[name]["failed"] == 0
        assert summary[name]["bytes_up"] == int(total) == summary[name]["bytes_down"]
    assert all(len(e["hops"]) == (1 if e["proxy"] == "alpha" else 2) for e in run.events("connect"))
