"""`posedge run`: the asyncio loop that owns the agent and the API server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from typing import Callable, Iterator

import uvicorn

from posedge.agent.api.app import build_app
from posedge.agent.config import Config
from posedge.agent.service import Agent

log = logging.getLogger("posedge.agent")


class AgentServer(uvicorn.Server):
    """uvicorn, but stop signals are ours: they are caught from the very start of `posedge run`
    (not only once the server listens), `serve()` then returns normally, the agent stops in order
    and the process exits 0. (uvicorn itself re-raises the signal after its shutdown, which would
    kill the process before the agent's own shutdown ran.)"""

    def __init__(self, config: uvicorn.Config, before_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self.before_shutdown = before_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Long-lived responses (the event stream) end first, so the server's wait for requests in
        # flight is short and nothing is cancelled mid-response (no CancelledError at ERROR).
        self.before_shutdown()
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


async def run_agent(config: Config, sock: socket.socket) -> int:
    try:
        agent = Agent(config)
    except (OSError, ValueError) as exc:
        print(f"posedge: cannot start: {exc}", file=sys.stderr)
        return 1
    server = AgentServer(uvicorn.Config(
        build_app(agent), log_level="warning", access_log=False, lifespan="off",
        timeout_graceful_shutdown=config.api.shutdown_grace_s, server_header=False,
    ), before_shutdown=agent.events.close_streams)
    with server.catch_stop_signals():
        await agent.start()
        banner = asyncio.create_task(_banner_when_listening(server, config))
        try:
            await server.serve(sockets=[sock])
        finally:
            banner.cancel()
            await agent.stop()
    return 0


async def _banner_when_listening(server: uvicorn.Server, config: Config) -> None:
    while not server.started:
        await asyncio.sleep(0.01)
    _banner(config)


def _banner(config: Config) -> None:
    api = config.api
    token_from = "the environment/config" if api.token is not None else str(api.token_file.resolve())
    print(
        f"posedge is running for store {config.store.tenant}/{config.store.id}\n"
        f"  local API:  http://{api.listen}/v1/health   (token: {token_from})\n"
        f"  database:   {config.storage.path.resolve()}\n"
        f"  HQ sync:    {config.mqtt.url if config.mqtt.enabled else 'disabled'}; not connected by this version: every "
        f"event waits in the outbox (posedge status shows it)\n"
        f"  stop it with Ctrl-C (or SIGTERM)",
        file=sys.stderr, flush=True,
    )
