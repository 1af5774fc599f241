"""`posedge service install|uninstall`: the system user, the unit file, `systemctl enable`.

Every change is a `Step` (what it does in words, and how), so `--dry-run` shows exactly what install
would do and `--print` shows the unit alone, both without root. `--root DIR` works on another root
file system (an image being built, a test): files go under DIR and systemctl runs with `--root=DIR`,
which enables the unit without a running systemd.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from posedge.agent.config import Config, ConfigError, load_config
from posedge.agent.system.unit import (
    DEFAULT_BIN,
    DEFAULT_CONFIG,
    DEVICE_GROUPS,
    STATE_DIR,
    UNIT_NAME,
    USER,
    options_for,
    render_unit,
)

UNIT_DIR = Path("etc/systemd/system")
STARTER_CONFIG = """# posedge config written by `posedge service install`; every key: config.example.toml.
# No terminal scanner under systemd: add your [[scanners]] and [[printers]] here, then
#   posedge check-config {path} && sudo posedge service install   (DeviceAllow= follows the devices)
scanners = []

[store]
tenant = "demo"
id = "store-001"
"""


@dataclass(frozen=True)
class Step:
    says: str
    run: Callable[[], None]


def add_parser(sub: Any) -> None:
    service = sub.add_parser("service", help="install or remove posedge as a systemd service",
                             description="Write, enable or remove the systemd unit (docs/operations.md).")
    verbs = service.add_subparsers(dest="service_command", metavar="ACTION", required=True)
    install = verbs.add_parser("install", help="create the posedge user, write and enable the unit (root)",
                               description="Create the system user 'posedge' (groups dialout, input, video, lp), "
                                           "write /etc/systemd/system/posedge.service with DeviceAllow= for the "
                                           "config's devices, and enable it. Run again after changing devices.")
    install.add_argument("--config", "-c", metavar="PATH", default=str(DEFAULT_CONFIG),
                         help=f"the config the service runs with (default {DEFAULT_CONFIG}; created if missing)")
    install.add_argument("--bin", metavar="PATH", default=None,
                         help="the posedge executable (default: this one's, else /usr/bin/posedge)")
    install.add_argument("--now", action="store_true", help="also start (or restart) the service")
    _common(install)
    install.add_argument("--print", action="store_true", dest="print_unit",
                         help="print the unit only, change nothing (no root needed)")
    uninstall = verbs.add_parser("uninstall", help="stop, disable and remove the unit (keeps user, config, data)")
    _common(uninstall)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="show every step and the unit, change nothing")
    parser.add_argument("--root", metavar="DIR", default="/", help="operate on this root file system (default /)")


def default_bin() -> Path:
    beside = Path(sys.executable).parent / "posedge"
    return beside if beside.exists() else DEFAULT_BIN


def run(args: argparse.Namespace) -> int:
    root = Path(args.root)
    if args.service_command == "uninstall":
        return _execute(uninstall_steps(root), args.dry_run)
    config_path = Path(args.config).absolute()
    valid, config = _read_config(_under(root, config_path))
    if not valid:
        return 2
    unit = render_unit(options_for(config, Path(args.bin) if args.bin else default_bin(), config_path))
    if args.print_unit:
        print(unit, end="")
        return 0
    steps = install_steps(root, unit, config_path, start=args.now)
    if args.dry_run:
        print(unit, end="")
    return _execute(steps, args.dry_run)


def _under(root: Path, path: Path) -> Path:
    return root / path.relative_to("/") if path.is_absolute() else path


def _read_config(path: Path) -> tuple[bool, Config | None]:
    """(valid, the config at `path`); None when there is none yet (install writes the starter)."""
    if not path.exists():
        return True, None
    try:
        return True, load_config(path)
    except ConfigError as exc:
        print(f"posedge service: {path} is not valid, fix it first (posedge check-config {path}):", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return False, None


def _execute(steps: list[Step], dry_run: bool) -> int:
    if not dry_run and os.geteuid() != 0:
        print("posedge service: this changes the system and needs root; run it with sudo "
              "(or add --dry-run to see what it would do)", file=sys.stderr)
        return 1
    for step in steps:
        print(("would: " if dry_run else "") + step.says, file=sys.stderr if not dry_run else sys.stdout)
        if dry_run:
            continue
        try:
            step.run()
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"posedge service: failed: {step.says}: {_why(exc)}", file=sys.stderr)
            return 1
    return 0


def _why(exc: Exception) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        output = (exc.stderr or exc.stdout or b"").decode(errors="replace").strip()
        return f"{' '.join(map(str, exc.cmd))} exited {exc.returncode}: {output}"
    return str(exc)


def install_steps(root: Path, unit: str, config_path: Path, start: bool) -> list[Step]:
    unit_file = root / UNIT_DIR / UNIT_NAME
    config_file = _under(root, config_path)
    steps = _user_steps(root)
    if not config_file.exists():
        steps.append(Step(f"write a starter config {config_file} (mode 0640, group {USER})",
                          lambda: _write_starter(config_file, config_path)))
    steps.append(Step(f"write {unit_file}", lambda: _write(unit_file, unit, 0o644)))
    steps += _systemctl_steps(root, ["daemon-reload"], ["enable", UNIT_NAME])
    if start:
        steps += _systemctl_steps(root, ["restart", UNIT_NAME])
    return steps


def uninstall_steps(root: Path) -> list[Step]:
    unit_file = root / UNIT_DIR / UNIT_NAME
    stop = ["disable", "--now", UNIT_NAME] if root == Path("/") else ["disable", UNIT_NAME]
    steps = _systemctl_steps(root, stop)
    steps.append(Step(f"remove {unit_file} (the user {USER}, {STATE_DIR} and the config stay)",
                      lambda: unit_file.unlink(missing_ok=True)))
    return steps + _systemctl_steps(root, ["daemon-reload"])


def _user_steps(root: Path) -> list[Step]:
    if root != Path("/"):
        return [Step(f"skip creating the user {USER} (another root: create it in that system)", lambda: None)]
    groups = [g for g in DEVICE_GROUPS if _group_exists(g)]
    steps = []
    if not _user_exists(USER):
        steps.append(Step(f"create the system user {USER}",
                          lambda: _cmd(["useradd", "--system", "--user-group", "--home-dir", str(STATE_DIR),
                                        "--no-create-home", "--shell", "/usr/sbin/nologin", USER])))
    if groups:
        steps.append(Step(f"add {USER} to the device groups {', '.join(groups)}",
                          lambda: _cmd(["usermod", "--append", "--groups", ",".join(groups), USER])))
    return steps


def _systemctl_steps(root: Path, *commands: list[str]) -> list[Step]:
    base = ["systemctl"] if root == Path("/") else ["systemctl", f"--root={root}"]
    steps = []
    for command in commands:
        if root != Path("/") and command[0] in ("daemon-reload", "restart"):
            continue  # no running manager to tell
        argv = base + command
        steps.append(Step(" ".join(argv), _runner(argv)))
    return steps


def _runner(argv: list[str]) -> Callable[[], None]:
    return lambda: _cmd(argv)


def _cmd(argv: list[str]) -> None:
    if shutil.which(argv[0]) is None:
        raise OSError(f"{argv[0]} is not installed here")
    subprocess.run(argv, check=True, capture_output=True)


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(mode)
    tmp.replace(path)


def _write_starter(path: Path, shown_as: Path) -> None:
    _write(path, STARTER_CONFIG.format(path=shown_as), 0o640)
    if _group_exists(USER):
        os.chown(path, 0, grp.getgrnam(USER).gr_gid)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False
