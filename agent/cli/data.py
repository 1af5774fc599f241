"""`posedge data import members|stock|coupons|pickups|revocations|verdicts|erase FILE`: HQ records from JSON lines.

The records go through the same apply logic the sync inbox uses (agent/till/hq_records.py): newer
versions win, older ones are ignored. Stores without HQ, demos and tests load data this way. The
import counts as contact with HQ (the offline coupon policy counts hours from it). Safe while the
agent runs: SQLite lets this process write between the agent's transactions (WAL, busy timeout).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from posedge.agent.till.hq_records import KINDS, ImportReport, PhoneHasher, apply_batch, parse_lines, record_hq_contact

BATCH = 500


def register(sub: Any) -> None:
    data = sub.add_parser("data", help="load HQ data (members, stock, pickup orders...) from JSON lines files",
                          description="Load HQ data into the store database.")
    verbs = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    load = verbs.add_parser("import", help="apply HQ records from a JSON lines file (newer versions win)",
                            description="Apply one record per line; every record carries its HQ `version`. "
                                        "Formats: docs/till.md. Exit 0: all applied or ignored as older; "
                                        "1: some lines were invalid (the rest were applied); 2: bad config.")
    load.add_argument("kind", choices=sorted(KINDS), help="what the file holds")
    load.add_argument("file", metavar="FILE", help="JSON lines file; '-' reads standard input")
    load.add_argument("--config", "-c", metavar="PATH", help="the config the agent runs with")
    load.add_argument("--progress", action="store_true",
                      help="show progress on stderr even when it is not a terminal (on a terminal it always shows)")


def run(args: argparse.Namespace, config: Any) -> int:
    from posedge.agent.cli.progress import Progress
    from posedge.agent.store.writer import StoreWriter

    try:
        handle = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")
    except OSError as exc:
        print(f"posedge: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    report = ImportReport()
    with handle:
        records = parse_lines(args.kind, handle, report)
    secret = config.members.phone_hash_key
    hasher = PhoneHasher(secret.get_secret_value() if secret is not None else None)
    writer = StoreWriter(config.storage.path, busy_timeout_ms=config.storage.busy_timeout_ms)
    failure = writer.start()
    if failure is not None:
        print(f"posedge: {failure.message}", file=sys.stderr)
        return 1
    progress = Progress(f"{args.kind} applied", args.progress)
    try:
        for start in range(0, len(records), BATCH):
            chunk = records[start:start + BATCH]
            writer.submit(lambda conn: apply_batch(conn, args.kind, chunk, hasher, config.store.id, report)).result()
            progress.update(start + len(chunk), len(records), " records")
        progress.finish()
        writer.submit(lambda conn: record_hq_contact(conn, "import")).result()
    except Exception as exc:  # a storage failure: say what was applied before it
        print(f"posedge: import stopped: {getattr(exc, 'message', exc)}", file=sys.stderr)
        print(json.dumps(report.as_dict(), ensure_ascii=False))
        return 1
    finally:
        writer.stop()
    print(json.dumps(report.as_dict(), ensure_ascii=False))
    if args.kind == "members" and not hasher.enabled and any(getattr(r, "phone", None) for _, r in records):
        print("posedge: phones were masked but not hashed: phone look-up needs [members] phone_hash_key",
              file=sys.stderr)
    for number, problem in report.invalid:
        print(f"{args.file}:{number}: {problem}", file=sys.stderr)
    return 1 if report.invalid else 0
