"""A receipt printer on a real TCP socket, for tests: records what it is sent, answers DLE EOT.

Controls: `paper_out`, `cover_open`, `offline` (status bits); `silent` (reads, never answers);
`refuse()` / `accept()` (listening socket closed / reopened on the same port); `close_after`
(drop the connection after N more job bytes, like a printer losing power mid-receipt);
`close_after_job` (drop it once, right after a whole job, through its cut, arrived); `flood`
(send bytes that are not status answers, as fast as the connection takes them, until turned off).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable

DLE_EOT = b"\x10\x04"
FLOOD = b"\xff" * 16384  # 0xff is never a status byte (bits 0 and 7 set)


class TcpPrinter:
    def __init__(self) -> None:
        self.port = 0
        self.paper_out = False
        self.cover_open = False
        self.offline = False
        self.silent = False
        self.close_after: int | None = None
        self.close_after_job = False
        self.on_bytes: Callable[[int], None] | None = None
        self.received = bytearray()  # job bytes, status queries taken out
        self.queries = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._listener: socket.socket | None = None
        self._clients: list[socket.socket] = []
        self._stopping = False
        self._flooding = threading.Event()
        self.flood_bytes = 0  # sent while flooding

    @property
    def flood(self) -> bool:
        return self._flooding.is_set()

    @flood.setter
    def flood(self, on: bool) -> None:
        if on:
            self._flooding.set()
        else:
            self._flooding.clear()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "TcpPrinter":
        self.accept()
        return self

    def accept(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(8)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept_loop, args=(listener,), daemon=True).start()

    def refuse(self) -> None:
        """Unplugged: the port refuses connections and open connections drop."""
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            except OSError:
                pass
            listener.close()
        self.drop_clients()

    def drop_clients(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            client.close()

    def stop(self) -> None:
        self._stopping = True
        self.refuse()

    # -- what the tests read ---------------------------------------------------------------
    def data(self) -> bytes:
        with self._lock:
            return bytes(self.received)

    def wait_for(self, predicate: Callable[[bytes], bool], timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(bytes(self.received)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"printer did not get the expected bytes within {timeout}s"
                                         f" ({len(self.received)} bytes)")
                self._changed.wait(left)
            return bytes(self.received)

    # -- the printer -----------------------------------------------------------------------
    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self._clients.append(client)
                self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()
            threading.Thread(target=self._flood, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        pending = b""
        while True:
            try:
                chunk = client.recv(4096)
            except OSError:
                return
            if not chunk:
                client.close()
                return
            pending += chunk
            pending = self._consume(client, pending)
            if pending is None:
                return

    def _flood(self, client: socket.socket) -> None:
        while not self._stopping and client.fileno() != -1:
            if not self._flooding.wait(0.1):
                continue
            try:
                client.sendall(FLOOD)
            except OSError:
                return
            with self._lock:
                self.flood_bytes += len(FLOOD)

    def _consume(self, client: socket.socket, data: bytes) -> bytes | None:
        """Record job bytes, answer complete status queries; returns an incomplete tail to keep."""
        i = 0
        job = bytearray()
        while i < len(data):
            if data[i] == 0x10 and i + 1 >= len(data):
                break  # maybe the start of a query: wait for more
            if data.startswith(DLE_EOT, i):
                if i + 2 >= len(data):
                    break
                self._answer(client, data[i + 2])
                i += 3
                continue
            job.append(data[i])
            i += 1
        dropped = self._record(bytes(job))
        if dropped:
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            client.close()
            return None
        return data[i:]

    def _record(self, job: bytes) -> bool:
        if not job:
            return False
        with self._changed:
            if self.close_after is not None:
                keep = job[: self.close_after]
                self.close_after -= len(keep)
                self.received += keep
                if self.close_after <= 0:
                    self.close_after = None
                    self._changed.notify_all()
                    return True
            else:
                self.received += job
                if self.close_after_job and b"\x1dV" in job:
                    self.close_after_job = False
                    self._changed.notify_all()
                    return True
            total = len(self.received)
            self._changed.notify_all()
        if self.on_bytes is not None:
            self.on_bytes(total)
        return False

    def _answer(self, client: socket.socket, n: int) -> None:
        with self._lock:
            self.queries += 1
        if self.silent or self.flood:  # a flooding printer's answers are lost in the flood
            return
        value = 0x12
        if n == 1 and (self.offline or self.cover_open or self.paper_out):
            value |= 0x08
        elif n == 2:
            value |= (0x04 if self.cover_open else 0) | (0x20 if self.paper_out else 0)
        elif n == 4 and self.paper_out:
            value |= 0x60
        try:
            client.sendall(bytes([value]))
        except OSError:
            pass
