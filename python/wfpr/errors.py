"""Winsock/Win32 errors as exceptions: one ``WSAError`` subclass per code.

The codes and their texts come from the C library's one table, so the two
cannot drift apart. Each exception carries ``winerror`` (the number) and
``name`` (``"WSAEINVAL"``); ``InsufficientBufferError`` also carries
``required_size``.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple, Type

from . import _wfpr


class WSAError(OSError):
    """A Winsock-style failure from the wfpr C library."""

    winerror: int
    name: str

    def __new__(cls, *args: object, **kwargs: object) -> "WSAError":
        # OSError.__new__ would read our arguments as (errno, strerror).
        return super().__new__(cls)

    def __init__(self, winerror: int, bytes_returned: int = 0, detail: str = ""):
        self.winerror = winerror
        self.name = _wfpr.err_name(winerror) or f"0x{winerror & 0xFFFFFFFF:08X}"
        self.bytes_returned = bytes_returned
        self.detail = detail
        self.message = f"{self.name} ({self._number()}): {_wfpr.strerror(winerror)}" + (f": {detail}" if detail else "")
        super().__init__(self.message)
        self.args = (self.message,)  # OSError keeps the args it was made with, none here

    def __str__(self) -> str:
        return self.message

    def _number(self) -> str:
        return f"0x{self.winerror & 0xFFFFFFFF:08X}" if self.winerror < 0 else str(self.winerror)

    def __reduce__(self) -> Tuple[Callable[[int, int, str], "WSAError"], Tuple[int, int, str]]:
        return (from_code, (self.winerror, self.bytes_returned, self.detail))


class InsufficientBufferError(WSAError):
    """The output buffer is too small; ``required_size`` says how big it must be."""

    @property
    def required_size(self) -> int:
        return self.bytes_returned


# Readable class names; every code also has its Winsock name as an alias.
_CLASS_NAMES = {
    "ERROR_INSUFFICIENT_BUFFER": "InsufficientBufferError",
    "WSA_OPERATION_ABORTED": "OperationAbortedError",
    "WSA_IO_INCOMPLETE": "IOIncompleteError",
    "WSA_IO_PENDING": "IOPendingError",
    "WSAEINTR": "InterruptedError_",
    "WSAEACCES": "BlockedError",
    "WSAEFAULT": "FaultError",
    "WSAEINVAL": "InvalidArgumentError",
    "WSAEMFILE": "TooManySocketsError",
    "WSAEWOULDBLOCK": "WouldBlockError",
    "WSAEINPROGRESS": "InProgressError",
    "WSAENOTSOCK": "NotSocketError",
    "WSAENOPROTOOPT": "NoProtocolOptionError",
    "WSAEOPNOTSUPP": "OperationNotSupportedError",
    "WSAEAFNOSUPPORT": "AddressFamilyNotSupportedError",
    "WSAEADDRINUSE": "AddressInUseError",
    "WSAEADDRNOTAVAIL": "AddressNotAvailableError",
    "WSAENETDOWN": "NetworkDownError",
    "WSAENOBUFS": "NoBuffersError",
    "WSAEISCONN": "AlreadyConnectedError",
    "WSAENOTCONN": "NotConnectedError",
    "WSAETIMEDOUT": "TimedOutError",
    "WSAECONNREFUSED": "ConnectionRefusedError_",
    "WSAELOOP": "HopLimitError",
    "WSAEALREADY": "AlreadyInProgressError",
    "WSAEHOSTUNREACH": "HostUnreachableError",
    "FWP_E_NOT_FOUND": "NotFoundError",
}

BY_CODE: Dict[int, Type[WSAError]] = {}


def _build() -> None:
    for i in range(_wfpr.err_count()):
        code = _wfpr.err_code_at(i)
        if code == 0:
            continue
        winsock_name = _wfpr.err_name(code) or "0x%08X" % (code & 0xFFFFFFFF)
        class_name = _CLASS_NAMES.get(winsock_name, winsock_name.title().replace("_", "") + "Error")
        cls = InsufficientBufferError if class_name == "InsufficientBufferError" else type(
            class_name, (WSAError,), {"__doc__": f"{winsock_name}: {_wfpr.strerror(code)}", "__module__": __name__})
        BY_CODE[code] = cls
        globals()[class_name] = cls
        globals()[winsock_name] = cls


_build()


def from_code(code: int, bytes_returned: int = 0, detail: str = "") -> WSAError:
    """The exception for a wfpr error code (used by the C binding); detail
    says why, where the library said."""
    return BY_CODE.get(code, WSAError)(code, bytes_returned, detail)


def error_class(code: int) -> Optional[Type[WSAError]]:
    return BY_CODE.get(code)


__all__ = ["WSAError", "InsufficientBufferError", "from_code", "error_class", "BY_CODE",
           *sorted(set(_CLASS_NAMES.values()))]
