"""`posedge`: run the agent, check a config, show status."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import socket
import sys
from pathlib import Path
from typing import Any, Callable

from posedge import __version__
from posedge.agent.cli import data as data_cli, db as db_cli
from posedge.agent.config import Config, ConfigError, load_config

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2

Command = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        COMMANDS[name] = fn
        return fn
    return register


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="posedge",
        description="posedge store agent: scanners, receipts, offline sales and HQ sync for one store PC.",
        epilog="Run 'posedge COMMAND --help' for a command's options. Docs: README.md and docs/.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the agent in the foreground (Ctrl-C or SIGTERM stops it)",
                         description="Run the agent. Without --config it runs on embedded defaults: state in ./var/, "
                                     "API on 127.0.0.1:8765, a scanner reading lines typed in this terminal, "
                                     "receipts rendered to ./var/receipts/, MQTT optional.")
    run.add_argument("--config", "-c", metavar="PATH", help="TOML config file (see config.example.toml)")
    run.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                     help="default INFO, or POSEDGE_LOG_LEVEL")
    run.add_argument("--log-format", default=None, choices=["text", "json"],
                     help="one event per line as key=value text (default) or JSON; or POSEDGE_LOG_FORMAT")

    check = sub.add_parser("check-config", help="validate a config file; exit 0 if valid, 2 if not",
                           description="Validate a config file and print every problem with the file, the key, "
                                       "what was found and what is allowed. Exit 0 valid, 2 invalid.")
    check.add_argument("path", metavar="PATH")

    status = sub.add_parser("status",
                            help="show the agent's status (from the running agent, or the database if stopped)",
                            description="Ask the running agent for its status; if it is not running, read the database "
                                        "directly (read-only) and show the outbox and storage.")
    status.add_argument("--config", "-c", metavar="PATH", help="the config the agent runs with")
    status.add_argument("--json", action="store_true", help="print JSON instead of text")

    sub.add_parser("version", help="print the version")
    db_cli.register(sub)
    data_cli.register(sub)
    for extend in PARSER_EXTENSIONS:
        extend(sub)
    return parser


# Features add their subcommands here: each is called with the subparsers object.
PARSER_EXTENSIONS: list[Callable[[Any], None]] = []


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_CONFIG
    return COMMANDS[args.command](args)


def _load(path: str | None) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"posedge: the configuration is not valid ({len(exc.issues)} problem(s)):", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return None


@command("version")
def cmd_version(args: argparse.Namespace) -> int:
    print(f"posedge {__version__}")
    return EXIT_OK


@command("check-config")
def cmd_check_config(args: argparse.Namespace) -> int:
    if _load(args.path) is None:
        return EXIT_CONFIG
    print(f"{args.path}: valid")
    return EXIT_OK


@command("run")
def cmd_run(args: argparse.Namespace) -> int:
    # Python's cyclic GC stays off while the agent's modules load and it starts (each collection would
    # walk every object made so far: ~100 ms of CPU, about a sixth of a start); run.py turns it back on
    # at READY, after moving what start made out of its reach (gc.freeze).
    gc.disable()
    try:
        return _run(args)
    finally:
        gc.enable()


def _run(args: argparse.Namespace) -> int:
    from posedge.agent.cli.run import run_agent
    from posedge.agent.logs import FORMATS, LEVELS, choose, setup_logging

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    setup_logging(choose(args.log_level, "POSEDGE_LOG_LEVEL", "INFO", LEVELS),
                  choose(args.log_format, "POSEDGE_LOG_FORMAT", "text", FORMATS))
    try:
        sock = bind_listen_socket(config.api.host, config.api.port)
    except OSError as exc:
        print(f"posedge: cannot listen on {config.api.listen}: {exc.strerror or exc} "
              "(is another posedge running? change [api] listen)", file=sys.stderr)
        return EXIT_FAILURE
    return asyncio.run(run_agent(config, sock, args.config))


def bind_listen_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio sets TCP_NODELAY on accepted sockets only then, and without it a
    # response written as headers + body waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


@command("status")
def cmd_status(args: argparse.Namespace) -> int:
    from posedge.agent.cli.status import read_status

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    status = read_status(config)
    if args.json:
        print(json.dumps(status, ensure_ascii=False, indent=2))
    else:
        print(format_status(status))
    return EXIT_OK if status.get("running") else EXIT_FAILURE


def format_status(status: dict[str, Any]) -> str:
    from posedge.agent.cli.status import commands_lines, config_lines

    lines = [f"agent: {'running' if status.get('running') else 'not running'}"]
    if status.get("note"):
        lines.append(f"  ({status['note']})")
    storage = status.get("storage", {})
    lines.append(f"storage: {storage.get('path')} state={storage.get('state')}"
                 + (f" error={storage['error']}" if storage.get("error") else ""))
    box = status.get("outbox", {})
    lines.append(f"outbox: {box.get('depth')} pending, oldest {box.get('oldest_pending_age_s')} s")
    sync = status.get("sync")
    if sync:
        lines.append(f"sync: {sync.get('state')}"
                     + (f" stream={sync['stream']} acked_seq={sync.get('acked_seq')}" if sync.get("stream") else "")
                     + (f" last_contact={sync['last_contact']}" if sync.get("last_contact") else "")
                     + (f" - {sync['last_error']}" if sync.get("last_error") else ""))
        presence = sync.get("hq")
        if presence:
            lines.append(f"  HQ: {presence.get('state')}"
                         + (f" since {presence['since']}" if presence.get("since") else ""))
    lines += config_lines(status.get("config"))
    lines += commands_lines(status.get("commands"))
    for device in status.get("devices", []):
        lines.append(f"{device['kind']} {device['name']} ({device['type']}): {device['state']}"
                     + (f" - {device['last_error']}" if device.get("last_error") else ""))
    for printer in status.get("receipts", {}).get("printers", []):
        lines.append(f"printer {printer['name']} ({printer.get('type', '?')}): {printer['state']}"
                     + (f" {printer['problem']}" if printer.get("problem") else "")
                     + (f", {printer['queued']} queued" if printer.get("queued") else "")
                     + (f", {printer['render_failures']} not rendered" if printer.get("render_failures") else "")
                     + (f" - {printer['reason']}" if printer.get("reason") else ""))
    return "\n".join(lines)


@command("db")
def cmd_db(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    return db_cli.run(args, config.storage.path)


def _receipt_parser(sub: Any) -> None:
    receipt = sub.add_parser("receipt", help="receipts: preview a sale's receipt as a PNG",
                             description="Work with receipts from the database (the agent need not run).")
    actions = receipt.add_subparsers(dest="receipt_action", metavar="ACTION", required=True)
    preview = actions.add_parser(
        "preview", help="draw a sale's receipt to a PNG file",
        description="Draw the receipt of SALE_ID, from the facts kept with its print job, to a PNG.")
    preview.add_argument("sale_id", metavar="SALE_ID")
    preview.add_argument("-o", "--output", required=True, metavar="FILE.png")
    preview.add_argument("--config", "-c", metavar="PATH", help="the config the agent runs with")


PARSER_EXTENSIONS.append(_receipt_parser)


@command("receipt")
def cmd_receipt(args: argparse.Namespace) -> int:
    import sqlite3

    from posedge.agent.errors import AgentError
    from posedge.agent.receipts.feature import preview_sale

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    try:
        png = preview_sale(config, args.sale_id)
        Path(args.output).write_bytes(png)
    except AgentError as exc:
        print(f"posedge: {exc.message}", file=sys.stderr)
        return EXIT_FAILURE
    except (OSError, sqlite3.Error) as exc:
        print(f"posedge: cannot preview the receipt: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{args.output}: receipt of sale {args.sale_id}")
    return EXIT_OK


def _scan_test_parser(sub: Any) -> None:
    from posedge.agent.scans.scan_test import add_parser

    add_parser(sub)


PARSER_EXTENSIONS.append(_scan_test_parser)


@command("scan-test")
def cmd_scan_test(args: argparse.Namespace) -> int:
    from posedge.agent.scans.scan_test import run_scan_test

    config = _load(args.config) if args.config else None
    if args.config and config is None:
        return EXIT_CONFIG
    return run_scan_test(args, config.scanner_configs() if config else [])


def _service_parser(sub: Any) -> None:
    from posedge.agent.system.install import add_parser

    add_parser(sub)


PARSER_EXTENSIONS.append(_service_parser)


@command("service")
def cmd_service(args: argparse.Namespace) -> int:
    from posedge.agent.system.install import run

    return run(args)


def _doctor_parser(sub: Any) -> None:
    doctor = sub.add_parser(
        "doctor", help="check devices, broker, clock, disk, database and service; say what to fix",
        description="Check everything the agent needs and print each problem with the command that fixes it. "
                    "Exit 0 all well, 1 problems, 2 the config is not valid. Safe while the agent runs.")
    doctor.add_argument("--config", "-c", metavar="PATH",
                        help="the config to check (default /etc/posedge/posedge.toml if it exists, else the "
                             "embedded defaults)")
    doctor.add_argument("--time-url", metavar="URL", help="an HQ web address whose Date header the clock is "
                                                          "compared with")
    doctor.add_argument("--json", action="store_true", help="print JSON instead of text")


PARSER_EXTENSIONS.append(_doctor_parser)


@command("doctor")
def cmd_doctor(args: argparse.Namespace) -> int:
    from posedge.agent.system.doctor import format_finding, run_checks
    from posedge.agent.system.unit import DEFAULT_CONFIG

    path = args.config or (str(DEFAULT_CONFIG) if DEFAULT_CONFIG.exists() else None)
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    findings = run_checks(config, args.time_url)
    problems = sum(1 for f in findings if f.ok is False)
    if args.json:
        print(json.dumps({"config": path, "problems": problems, "checks": [f.as_dict() for f in findings]},
                         ensure_ascii=False, indent=2))
    else:
        print(f"posedge doctor: {path or 'embedded defaults'}")
        for finding in findings:
            print(format_finding(finding))
        print("all well" if not problems else f"{problems} problem(s)")
    return EXIT_FAILURE if problems else EXIT_OK


@command("data")
def cmd_data(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    return data_cli.run(args, config)


if __name__ == "__main__":
    raise SystemExit(main())
