"""`posedge-hq command reload|resync|diagnostics|rotate-token|status` (hq/commands.py, docs/operations.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from posedge.hq import commands, db, keys
from posedge.sync.command_doc import LOG_LINES_DEFAULT, MAX_TTL_S
from posedge.sync.down import RECORD_KINDS

VERBS = {"reload": "reload", "resync": "resync", "diagnostics": "diagnostics", "rotate-token": "rotate_token"}
HELP = {"reload": "re-read the store's config file, validated as at start (as SIGHUP)",
        "resync": "have the store ask HQ again for every document of some record kinds",
        "diagnostics": "have the store upload a diagnostics bundle (config minus secrets, status, recent logs)",
        "rotate-token": "have the store make a new local API token (it stays on the store PC)"}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("command", help="sign a command for a store or a tenant; serve publishes it",
                            description="Sign a command with an HQ config key and write it to HQ's down log "
                                        "(--db); the running posedge-hq serve publishes it and records the answer.")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, what in HELP.items():
        one = verbs.add_parser(verb, help=what, description=what)
        one.add_argument("--db", required=True, metavar="URL", help="HQ's database (as posedge-hq serve --db)")
        one.add_argument("--tenant", required=True, help="the tenant")
        one.add_argument("--store", default=None, help="one store (default: every store of the tenant)")
        one.add_argument("--key", required=True, type=Path, metavar="KEYFILE", help="HQ config key (posedge-hq keygen)")
        one.add_argument("--kid", required=True, help="the key's id, as stores list it in [hq.config_keys]")
        one.add_argument("--ttl-s", type=_ttl, default=3600, help="seconds the command stays valid (default 3600)")
        if verb == "resync":
            one.add_argument("--kinds", nargs="+", choices=RECORD_KINDS, default=None, metavar="KIND",
                             help=f"record kinds, of {', '.join(RECORD_KINDS)} (default: members stock)")
        if verb == "diagnostics":
            one.add_argument("--log-lines", type=int, default=LOG_LINES_DEFAULT,
                             help=f"recent log lines in the bundle (default {LOG_LINES_DEFAULT})")
    status = verbs.add_parser("status", help="what HQ knows of a command: its answers, its bundles")
    status.add_argument("cmd_id", metavar="CMD_ID")
    status.add_argument("--db", required=True, metavar="URL", help="HQ's database")
    status.add_argument("--bundle-out", type=Path, metavar="FILE",
                        help="write the command's (first complete) diagnostics bundle here, as JSON")


def main(args: argparse.Namespace) -> int:
    name = f"posedge-hq command {args.verb}"
    refused: tuple[type[Exception], ...] = (OSError, ValueError, keys.KeyFileError, *db.database_errors())
    try:
        database = db.open_database(args.db)
    except refused as exc:
        print(f"{name}: --db {db.masked_url(args.db)!r}: {exc}", file=sys.stderr)
        return 2
    try:
        return status(args, database) if args.verb == "status" else issue(args, database)
    except refused as exc:  # CommandError is a ValueError
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    finally:
        database.close()


def issue(args: argparse.Namespace, database: db.Database) -> int:
    cmd = VERBS[args.verb]
    cmd_args: dict[str, Any] = {}
    if cmd == "resync":
        cmd_args = commands.resync_args(args.kinds)
    elif cmd == "diagnostics":
        cmd_args = {"log_lines": args.log_lines}
    cmd_id, version = commands.issue(database, args.key, keys.check_kid(args.kid), args.tenant, args.store, cmd,
                                     cmd_args, args.ttl_s)
    print(json.dumps({"cmd_id": cmd_id, "cmd": cmd, "tenant": args.tenant, "store": args.store, "args": cmd_args,
                      "version": version}))
    print(f"posedge-hq command: {cmd} enqueued; the running serve publishes it; "
          f"see its answers with: posedge-hq command status {cmd_id} --db ...", file=sys.stderr)
    return 0


def status(args: argparse.Namespace, database: db.Database) -> int:
    found = commands.command_status(database, args.cmd_id)
    if found is None:
        print(f"posedge-hq command status: no command {args.cmd_id!r} in this database", file=sys.stderr)
        return 2
    print(json.dumps(found, ensure_ascii=False, indent=2))
    if args.bundle_out is not None:
        complete = [b for b in found["bundles"] if b["complete"]]
        if not complete:
            print("posedge-hq command status: no complete diagnostics bundle yet", file=sys.stderr)
            return 1
        bundle = commands.read_bundle(database, found["tenant"], complete[0]["bundle_id"])
        args.bundle_out.write_text(json.dumps(bundle, ensure_ascii=False, indent=2), encoding="utf-8")
        print(f"posedge-hq command status: wrote bundle {complete[0]['bundle_id']} to {args.bundle_out}",
              file=sys.stderr)
    return 0


def _ttl(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_TTL_S:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds from 1 to {MAX_TTL_S}")
    return value
