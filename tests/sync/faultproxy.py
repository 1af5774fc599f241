"""A TCP proxy between an MQTT client and its broker that misbehaves on command, for tests and bench/.

`FaultProxy(upstream_port).start()` listens on a free port of 127.0.0.1 and opens one upstream connection per
client connection. Controls, callable from any thread while connections are open:

- `latency(seconds)`: every chunk is delivered that long after it arrived, in each direction (pipelined, so
  a window of messages in flight still moves: it adds delay, not a stop-and-wait);
- `bandwidth(bytes_per_s)`: each direction of each connection at most that rate (None: no cap);
- `reset()`: every open connection is closed with a TCP RST on both sides, now;
- `silence()`: bytes are accepted and thrown away both ways, a closing end is not passed on, new connections
  are accepted and get nothing: keepalives, CONNACK waits and ack timeouts have to notice;
- `pass_through()`: no latency, no cap, no silence; connections that lost bytes to a silence are reset (their
  byte streams are broken), new ones work.

One asyncio loop in a daemon thread does everything; an error on one connection closes that connection only
(counted in `errors`), never the proxy.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Coroutine

CHUNK = 65536


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(eq=False)  # identity: connections live in a set
class _Connection:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    tainted: bool = False  # lost bytes to a silence: never whole again
    closed_sides: int = 0  # FINs passed on; at two the connection is over
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            _abort_with_rst(writer)
        for task in self.tasks:
            task.cancel()


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    try:
        if sock is not None:  # linger 0: close() sends RST, as a dead NAT or a crashed peer would look
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1", port: int | None = None) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = port or free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.counts: Counter[str] = Counter()
        self._latency_s = 0.0
        self._rate: float | None = None
        self._silent = False
        self._connections: set[_Connection] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)

    # -- controls (any thread) ---------------------------------------------------------------
    def start(self) -> "FaultProxy":
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def latency(self, seconds: float) -> None:
        self._latency_s = seconds

    def bandwidth(self, bytes_per_s: float | None) -> None:
        self._rate = bytes_per_s

    def silence(self) -> None:
        self._silent = True
        self.counts["silences"] += 1

    def pass_through(self) -> None:
        self._latency_s, self._rate, self._silent = 0.0, None, False
        self._call(self._reset(only_tainted=True))

    def reset(self) -> int:
        """Close every open connection with an RST; returns how many there were."""
        return self._call(self._reset(only_tainted=False))

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def _call(self, coro: Coroutine[Any, Any, int | None]) -> int:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10) or 0

    # -- the loop ----------------------------------------------------------------------------
    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    async def _shutdown(self) -> int:
        if self._server is not None:
            self._server.close()
        return await self._reset(only_tainted=False)

    async def _reset(self, only_tainted: bool) -> int:
        chosen = [c for c in self._connections if c.tainted or not only_tainted]
        for connection in chosen:
            self._connections.discard(connection)
            connection.abort()
        self.counts["resets"] += len(chosen)
        return len(chosen)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counts["connections"] += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:  # the broker is down: the client sees its connection closed, as without a proxy
            self.counts["upstream_refused"] += 1
            _abort_with_rst(writer)
            return
        connection = _Connection(writer, up_writer)
        self._connections.add(connection)
        connection.tasks = [asyncio.create_task(self._pump(connection, reader, up_writer, "up")),
                            asyncio.create_task(self._pump(connection, up_reader, writer, "down"))]

    async def _pump(self, connection: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    direction: str) -> None:
        """Read one direction, hand chunks (with the time they are due) to its sender, which writes them."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.create_task(self._send(connection, queue, writer, direction))
        connection.tasks.append(sender)
        try:
            while True:
                data = await reader.read(CHUNK)
                if self._silent:
                    connection.tainted = True
                    self.counts[f"dropped_bytes_{direction}"] += len(data)
                    if not data:
                        return  # a close swallowed: the other end hears nothing until pass_through resets it
                    continue
                await queue.put((time.monotonic() + self._latency_s, data))
                if not data:
                    return
        except (OSError, asyncio.IncompleteReadError):
            self._close(connection)
        except Exception:
            self.counts["errors"] += 1
            self._close(connection)

    async def _send(self, connection: _Connection, queue: "asyncio.Queue[tuple[float, bytes]]",
                    writer: asyncio.StreamWriter, direction: str) -> None:
        try:
            while True:
                due, data = await queue.get()
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if not data:  # the sender closed its side: pass the FIN on once everything before it is out
                    writer.write_eof()
                    self._half_closed(connection)
                    return
                self.counts[f"bytes_{direction}"] += len(data)
                await self._write_capped(writer, data)
        except (OSError, RuntimeError):
            self._close(connection)
        except Exception:
            self.counts["errors"] += 1
            self._close(connection)

    async def _write_capped(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        view = memoryview(data)
        while view:
            rate = self._rate
            piece = view if rate is None else view[:max(1, int(rate / 50))]  # 20 ms worth at a time
            writer.write(piece)
            await writer.drain()
            if rate is not None:
                await asyncio.sleep(len(piece) / rate)
            view = view[len(piece):]

    def _half_closed(self, connection: _Connection) -> None:
        connection.closed_sides += 1
        if connection.closed_sides == 2 and connection in self._connections:
            self._connections.discard(connection)
            connection.client.close()
            connection.upstream.close()

    def _close(self, connection: _Connection) -> None:
        if connection in self._connections:
            self._connections.discard(connection)
            connection.abort()
