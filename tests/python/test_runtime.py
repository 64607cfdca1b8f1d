"""Runtime behaviour: the GIL is released around blocking calls, and a long
run of queries does not leak."""
import resource
import socket
import threading
import time

import pytest

import wfpr


def test_a_blocking_call_does_not_stall_other_threads(layer):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    started = threading.Event()

    def blocked():
        started.set()
        wfpr.recvmsg(sock)  # blocks in C until the datagram below

    t = threading.Thread(target=blocked)
    t.start()
    started.wait()
    time.sleep(0.05)
    ticks, deadline = 0, time.monotonic() + 0.3
    while time.monotonic() < deadline:  # pure Python work: needs the GIL
        ticks += 1
    assert t.is_alive() and ticks > 10_000
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"wake", sock.getsockname())
    t.join(5)
    sock.close()


def test_a_callout_runs_in_the_calling_thread_with_the_gil(layer, echo):
    names = []
    layer.add_callout(lambda req: names.append(threading.current_thread().name), ports=echo.port)
    t = threading.Thread(target=lambda: socket.create_connection(echo.address).close(), name="plain")
    t.start()
    t.join()
    s = socket.socket()
    wfpr.connect(s, echo.address)
    s.close()
    assert names == [threading.main_thread().name]  # plain sockets are not classified


def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def test_100k_queries_do_not_grow_memory(redirected):
    _, accepted = redirected()
    for _ in range(2000):  # warm up allocator and caches
        wfpr.query_redirect_records(accepted)
    before = rss_kib()
    for _ in range(100_000):
        wfpr.query_redirect_records(accepted)
        wfpr.query_redirect_context(accepted)
    grown = rss_kib() - before
    assert grown < 5 * 1024, f"RSS grew {grown} KiB"


def test_ebpf_switch_outside_its_cgroup():
    """wfpr.ebpf_attach sends QUERY to the kernel; outside the eBPF backend's
    cgroup no program answers, and that is WSAENETDOWN, not a crash or a hang.
    (tests/integration/test_ebpf.py runs the backend itself, as root.)"""
    with socket.socket() as s:
        assert wfpr.ebpf_available(s) is False
        wfpr.ebpf_attach()
        try:
            with pytest.raises(wfpr.WSAError) as e:
                wfpr.query_redirect_records(s)
            assert e.value.name == "WSAENETDOWN"
        finally:
            wfpr.ebpf_attach(False)
