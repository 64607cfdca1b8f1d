"""UDP: the first datagram of a redirected flow carries the records (and the
context when asked), later ones do not; replies come from the original
destination."""
import socket
import threading

import wfpr
from conftest import ManualRedirector


def test_udp_flow_through_a_python_proxy(layer):
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    proxy = ManualRedirector(layer, "dns-filter", port=server.getsockname()[1], protocol="udp")
    wfpr.want_context(proxy.listener)

    def echo():
        for _ in range(3):
            data, addr = server.recvfrom(2048)
            server.sendto(data, addr)

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    seen = []
    for i in range(3):
        wfpr.sendto(client, b"q%d" % i, server.getsockname())
        d = wfpr.recvmsg(proxy.listener)
        seen.append(d)
        if d.records is not None:
            dest, _ = wfpr.decode_context(d.context)
            wfpr.sendmsg(upstream, d.data, dest, records=d.records)
        else:
            wfpr.sendto(upstream, d.data, dest)
        reply, _ = wfpr.recvfrom(upstream)
        proxy.listener.sendto(reply, d.address)
        data, source = wfpr.recvfrom(client)
        assert data == b"q%d" % i
        assert source == server.getsockname()  # not the proxy's address
    t.join()
    assert seen[0].records is not None and seen[0].context is not None
    assert all(d.records is None and d.context is None for d in seen[1:])
    records = wfpr.RedirectRecords.parse(seen[0].records)
    assert [h.redirector for h in records] == ["dns-filter"] and records[0].protocol == "udp"
    for s in (client, upstream, server, proxy.listener):
        s.close()
