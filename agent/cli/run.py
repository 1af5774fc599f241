"""`posedge run`: the asyncio loop that owns the agent and the API server."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
from typing import Any, Awaitable, Callable, Iterator

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from posedge.agent.api.app import build_app
from posedge.agent.api.errors import RedactExceptions
from posedge.agent.api.guards import ApiCounters
from posedge.agent.config import ApiConfig, Config, ConfigError, read_config_file
from posedge.agent.service import Agent
from posedge.agent.store.upgrade import DatabaseRefused, prepare
from posedge.agent.system.notify import Watchdog, notify, start_stall_hook, watchdog_interval_s

EXIT_DATABASE_REFUSED = 3  # the database is a newer posedge's, or its pre-migration backup failed

log = logging.getLogger("posedge.agent")


class AgentServer(uvicorn.Server):
    """uvicorn, but stop signals are ours: they are caught from the very start of `posedge run`
    (not only once the server listens), `serve()` then returns normally, the agent stops in order
    and the process exits 0. (uvicorn itself re-raises the signal after its shutdown, which would
    kill the process before the agent's own shutdown ran.)"""

    def __init__(self, config: uvicorn.Config, before_shutdown: Callable[[], Awaitable[None]],
                 on_stop_requested: Callable[[], None] = lambda: None) -> None:
        super().__init__(config)
        self.before_shutdown = before_shutdown
        self.on_stop_requested = on_stop_requested
        self._stopping_sent = False

    def handle_exit(self, sig: int, frame: Any) -> None:
        # STOPPING=1 the moment the stop is asked for, so systemd shows "deactivating" during the drain.
        if not self._stopping_sent:
            self._stopping_sent = True
            self.on_stop_requested()  # first: no scan read from this moment on is acted on
            log.info("event=stop_requested signal=%s", signal.Signals(sig).name)
            notify("STOPPING=1", "STATUS=stopping: finishing requests in flight")
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Scanners stop and the scans read before are processed; long-lived responses (the event stream)
        # end, so the server's wait for requests in flight is short and nothing is cancelled mid-response
        # (no CancelledError at ERROR). Then no new connection is taken and those in flight are answered.
        try:
            await self.before_shutdown()
        except Exception:  # the API must still drain, and the agent stop
            log.exception("event=stop_step_failed step=scans")
        log.info("event=api_closing (no new requests; those in flight are answered)")
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # handlers are installed by catch_stop_signals() for the whole run

    @contextlib.contextmanager
    def catch_stop_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


STATE_UMASK = 0o077  # the database, its -wal/-shm, the token, keys: readable by the agent's user only


def header_timeout_protocol(timeout_s: float, counters: ApiCounters) -> type[HttpToolsProtocol]:
    """uvicorn's HTTP protocol with the one timeout it lacks: a request's line and headers must
    arrive within `timeout_s` (of the connection, or of a kept-alive request's first byte)."""

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timer()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm_header_timer()

        def on_headers_complete(self) -> None:
            self._disarm_header_timer()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            self._disarm_header_timer()
            self._header_timer = self.loop.call_later(timeout_s, self._headers_too_slow)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
                return
            counters.header_timeouts += 1
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\n"
                                 b"content-length: 0\r\nconnection: close\r\n\r\n")
            self.transport.close()

    return HeaderTimeoutProtocol


def server_config(app: Any, api: ApiConfig) -> uvicorn.Config:
    """uvicorn with our limits; its own error logging keeps no request input (RedactExceptions)."""
    for name in ("uvicorn.error", "asyncio"):
        logging.getLogger(name).addFilter(RedactExceptions())
    return uvicorn.Config(
        app, http=header_timeout_protocol(api.header_timeout_s, app.counters), log_level="warning",
        access_log=False, lifespan="off", timeout_graceful_shutdown=api.shutdown_grace_s, server_header=False,
        limit_concurrency=api.max_connections, timeout_keep_alive=api.keep_alive_s,
    )


async def run_agent(config: Config, sock: socket.socket, config_path: str | None = None) -> int:
    os.umask(STATE_UMASK)
    storage = config.storage
    try:
        prepare(storage.path, storage.upgrade_backup_dir, storage.upgrade_backups_keep)
    except DatabaseRefused as exc:
        print(f"posedge: cannot start: {exc}", file=sys.stderr)
        return EXIT_DATABASE_REFUSED
    try:
        file_raw = read_config_file(config_path) if config_path else None
        agent = Agent(config, file_raw, config_path or "<embedded defaults>")
    except (OSError, ValueError, ConfigError) as exc:
        print(f"posedge: cannot start: {exc}", file=sys.stderr)
        return 1
    server = AgentServer(server_config(build_app(agent), config.api), before_shutdown=agent.stop_taking_scans,
                         on_stop_requested=agent.stop_requested)
    with server.catch_stop_signals(), reload_on_sighup(agent, config_path):
        stall = start_stall_hook()
        await agent.start()
        ready = asyncio.create_task(_ready_when_listening(server, agent, config))
        try:
            await server.serve(sockets=[sock])
        finally:
            ready.cancel()
            if stall is not None:
                stall.cancel()
            await _stop_within_bound(agent)
    return 0


@contextlib.contextmanager
def reload_on_sighup(agent: Agent, config_path: str | None) -> Iterator[None]:
    """SIGHUP: read the config file again, validated as at start; an invalid file is refused (logged with
    each problem) and the running config kept; a valid one is applied live with HQ's pushed documents
    merged on top (agent/reconfig/)."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[bool]] = set()

    def reload() -> None:
        if config_path is None:
            log.warning("event=config_reload_skipped reason=%r", "running on the embedded defaults, no file")
            return
        log.info("event=config_reload_requested file=%s", config_path)
        task = loop.create_task(agent.pushed_config.reload_file(config_path))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)




# Past the API's grace: each feature's own stop is bounded (printer and link joins, a few seconds each),
# this bounds them all, so a stop never hangs until systemd's TimeoutStopSec kills the agent.
STOP_BOUND_S = 20.0


async def _stop_within_bound(agent: Agent) -> None:
    log.info("event=agent_stopping")
    try:
        await asyncio.wait_for(agent.stop(), STOP_BOUND_S)
    except asyncio.TimeoutError:
        # A thread stuck in a device call would hold the interpreter's exit too: leave now. Every
        # acknowledged sale is committed already; the WAL is checkpointed at the next start.
        log.error("event=agent_stop_timeout bound_s=%s (some device or link did not stop in time)", STOP_BOUND_S)
        logging.shutdown()
        os._exit(1)


async def _ready_when_listening(server: uvicorn.Server, agent: Agent, config: Config) -> None:
    """READY=1 once the store is open, the drivers started (agent.start returned) and the API listens."""
    while not server.started:
        await asyncio.sleep(0.01)
    _banner(config)
    _dump_modules(os.environ.get(DEBUG_MODULES_ENV))
    notify("READY=1", f"STATUS=serving on {config.api.listen}", f"MAINPID={os.getpid()}")
    _gc_after_start()
    interval = watchdog_interval_s()
    if interval is None:
        return
    watchdog = Watchdog(interval, [agent.writer.health_problem, lambda: _server_problem(server)])
    watchdog.start()
    try:
        await asyncio.Event().wait()  # lives as long as the server; cancelled at stop
    finally:
        watchdog.stop()


def _gc_after_start() -> None:
    """`posedge run` starts with the cyclic GC off (agent/cli/main.py): now that the agent serves, what start
    made (modules, models, routes: long-lived) goes to the permanent generation, which no collection walks,
    and the GC is on again for what the agent makes from here on."""
    gc.freeze()
    gc.enable()


# Debug and tests only (tests/system/test_lazy_imports.py): at READY, write the names of the modules imported
# so far to this file, one a line. What may be imported at start is in docs/architecture.md.
DEBUG_MODULES_ENV = "POSEDGE_DEBUG_MODULES_FILE"


def _dump_modules(path: str | None) -> None:
    if not path:
        return
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("".join(f"{name}\n" for name in sorted(sys.modules)))
    except OSError as exc:
        log.warning("event=debug_modules_not_written path=%s error=%r", path, exc.strerror or str(exc))


def _server_problem(server: uvicorn.Server) -> str | None:
    return "the HTTP server is exiting" if server.should_exit else None


def _sync_target(config: Config) -> str:
    return f"{config.mqtt.url} (MQTT {config.mqtt.protocol})" if config.mqtt.enabled else "disabled"


def _banner(config: Config) -> None:
    from posedge.agent import logs

    api = config.api
    if logs.FORMAT == "json":  # every line a JSON event: the banner's facts as one
        log.info("event=agent_listening api=%s database=%s sync=%r", api.listen, config.storage.path.resolve(),
                 _sync_target(config))
        return
    token_from = "the environment/config" if api.token is not None else str(api.token_file.resolve())
    print(
        f"posedge is running for store {config.store.tenant}/{config.store.id}\n"
        f"  local API:  http://{api.listen}/v1/health   (token: {token_from})\n"
        f"  database:   {config.storage.path.resolve()}\n"
        f"  HQ sync:    {_sync_target(config)}; "
        f"events wait in the outbox until HQ acknowledges them (posedge status shows it)\n"
        f"  stop it with Ctrl-C (or SIGTERM)",
        file=sys.stderr, flush=True,
    )
