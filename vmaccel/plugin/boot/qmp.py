"""A minimal QMP client: qemu's JSON machine protocol over a socket pair.

qemu gets its end of the pair as an inherited descriptor (``-chardev socket,fd=N``), so there
is no socket path: a Unix socket's path is limited to 107 bytes, which deep temporary
directories exceed.

One command at a time (not thread-safe): :meth:`QmpClient.execute` sends ``{"execute": ...}``
and returns the ``return`` value, skipping the asynchronous events qemu interleaves (they are
kept in :attr:`QmpClient.events`). An ``error`` answer raises :class:`QmpError` with qemu's
class and description; a closed socket raises :class:`ConnectionError`.
"""

from __future__ import annotations

import json
import socket
from typing import Any


class QmpError(RuntimeError):
    """qemu refused a command: ``error_class`` (e.g. ``GenericError``) and its description."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"QMP {command}: {error_class}: {desc}")
        self.error_class = error_class
        self.desc = desc


class QmpClient:
    """A negotiated QMP session over ``sock``, a connected stream socket whose other end is
    qemu's monitor (see :func:`socket_pair`); ``timeout`` (seconds) bounds every reply. When
    qemu exits before it greets, :class:`ConnectionError` (or :class:`TimeoutError`)."""

    def __init__(self, sock: socket.socket, timeout: float = 30.0) -> None:
        self.events: list[dict[str, Any]] = []
        self._sock = sock
        self._sock.settimeout(timeout)
        self._buf = b""
        try:
            greeting = self._message()
            if "QMP" not in greeting:
                raise ConnectionError(f"no QMP greeting: {greeting!r}")
            self.command("qmp_capabilities")
        except BaseException:
            self._sock.close()
            raise

    def command(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        request: dict[str, Any] = {"execute": name}
        if arguments:
            request["arguments"] = arguments
        self._sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            msg = self._message()
            if "event" in msg:
                self.events.append(msg)
                continue
            if "error" in msg:
                err = msg["error"]
                raise QmpError(name, str(err.get("class")), str(err.get("desc")))
            if "return" in msg:
                return msg["return"]

    def close(self) -> None:
        self._sock.close()

    def _message(self) -> dict[str, Any]:
        while b"\n" not in self._buf:
            data = self._sock.recv(65536)
            if not data:
                raise ConnectionError("qemu closed the QMP socket")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        msg = json.loads(line)
        if not isinstance(msg, dict):
            raise ConnectionError(f"unexpected QMP message {msg!r}")
        return msg


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """(our end, qemu's end): give qemu's end's descriptor to qemu and close it here once qemu
    has started, so that our end sees EOF when qemu exits."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    theirs.set_inheritable(True)
    return ours, theirs
