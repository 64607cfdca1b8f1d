"""wfpr: the Windows Filtering Platform connection-redirect model on Linux.

Cooperating transparent proxies, each with its own redirector, see every
connection exactly once: a redirect record travels with the connection and
the layer's redirect state stops loops.

    import wfpr
    records = wfpr.query_redirect_records(accepted_socket)
    wfpr.set_redirect_records(outbound_socket, records)
"""
from . import _wfpr
from . import aio
from .errors import *  # noqa: F401,F403 - one exception class per code
from .errors import InsufficientBufferError, WSAError, from_code
from .layer import BLOCK, PERMIT, ConnectRequest, Layer, Redirect, Redirector
from .proxy import ProxiedConnection, Proxy
from .records import Hop, RedirectRecords, RedirectState
from .sockets import (
    SIO_FLUSH, SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT, SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS,
    SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, Datagram, Overlapped, close, connect, decode_context, flush, ioctl,
    original_destination, query_redirect_context, query_redirect_records, recvfrom, recvmsg, sendmsg, sendto,
    set_overlapped, set_redirect_records, want_context)

__version__ = "0.1.0"
RECORD_MAX_HOPS = _wfpr.RECORD_MAX_HOPS
RECORD_MAX_SIZE = _wfpr.RECORD_MAX_SIZE
