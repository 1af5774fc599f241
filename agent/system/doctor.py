"""`posedge doctor`: is everything this store PC needs there and answering? Each problem in plain words,
with the command that fixes it. Exit 0 all well, 1 problems, 2 the config is not valid.

Read-only and safe while the agent runs: devices are opened and closed (a serial port is not locked
by the agent, a network printer takes one more short connection), the broker gets a second client
with its own id (`<client id>-doctor`, so the agent's session is not kicked off), the database is
read through a read-only connection.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import sqlite3
import ssl
import stat
import subprocess
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.request import Request, urlopen

from posedge.agent.config import Config
from posedge.agent.hq_sync.feature import link_settings
from posedge.agent.system.unit import DEVICE_GROUPS, UNIT_NAME, USER, device_allow

CONNECT_TIMEOUT_S = 3.0
DISK_MIN_FREE_BYTES = 512 * 1024 * 1024
DISK_MIN_FREE_RATIO = 0.05
UNIT_FILE = Path("/etc/systemd/system") / UNIT_NAME
RESTART = "sudo systemctl restart posedge"


@dataclass(frozen=True)
class Finding:
    what: str  # "scanner counter (serial /dev/ttyACM0)"
    ok: bool | None  # None: not checked, said why
    says: str
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.what, "ok": self.ok, "says": self.says, "fix": self.fix}


def run_checks(config: Config, time_url: str | None = None) -> list[Finding]:
    findings = list(device_findings(config))
    findings.append(broker_finding(config))
    findings.append(clock_finding(config, time_url))
    findings.append(disk_finding(config))
    findings.append(database_finding(config))
    findings += unit_findings(config)
    return findings


def format_finding(finding: Finding) -> str:
    mark = {True: "ok     ", False: "PROBLEM", None: "--     "}[finding.ok]
    line = f"{mark} {finding.what}: {finding.says}"
    if finding.fix and finding.ok is not True:
        line += f"\n        fix: {finding.fix}"
    return line


# -- devices -------------------------------------------------------------------------------------

def device_findings(config: Config) -> Iterator[Finding]:
    for kind, driver in [("scanner", d) for d in config.scanner_configs()] + \
                        [("printer", d) for d in config.printer_configs()]:
        yield device_finding(kind, driver)


def device_finding(kind: str, driver: Any) -> Finding:
    what = f"{kind} {driver.name} ({driver.type})"
    check = DEVICE_CHECKS.get((kind, driver.type)) or DEVICE_CHECKS.get(("*", driver.type))
    if check is None:
        return Finding(what, None, "not checked: no check for this device type")
    try:
        return check(what, driver)
    except Exception as exc:  # a check's own failure is a finding, not a crash of doctor
        return Finding(what, False, f"could not be checked: {exc.__class__.__name__}: {exc}")


def _serial(what: str, driver: Any) -> Finding:
    from posedge.drivers.scanners.serial import resolve_port

    try:
        port = resolve_port(str(driver.port))
    except OSError as exc:
        return Finding(what, False, str(exc), "plug the scanner in, or set its port (ls -l /dev/serial/by-id/)")
    problem = _node_problem(what, port, os.R_OK | os.W_OK)
    if problem is not None:
        return problem
    import serial

    try:
        serial.Serial(port, getattr(driver, "baudrate", 9600), timeout=0).close()
    except (serial.SerialException, OSError) as exc:
        return Finding(f"{what} {port}", False, f"does not open: {exc}",
                       "is another program using it? (fuser -v " + port + ")")
    return Finding(f"{what} {port}", True, "opens")


def _event_node(what: str, driver: Any) -> Finding:
    path = getattr(driver, "path", None)
    if not path:
        return Finding(what, None, "not checked: chosen by name or USB id at start (posedge scan-test lists them)")
    problem = _node_problem(what, path, os.R_OK)
    if problem is not None:
        return problem
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    os.close(fd)
    return Finding(f"{what} {path}", True, "opens")


def _camera(what: str, driver: Any) -> Finding:
    source = driver.source
    path = f"/dev/video{source}" if isinstance(source, int) else str(source)
    if not path.startswith("/"):
        return Finding(what, None, f"not checked: a stream ({path.split(':')[0]}), opened at start")
    problem = _node_problem(what, path, os.R_OK | os.W_OK if path.startswith("/dev/") else os.R_OK)
    return problem or Finding(f"{what} {path}", True, "exists and may be opened")


def _tcp(what: str, driver: Any) -> Finding:
    if getattr(driver, "mode", "client") == "listen":
        return Finding(what, None, f"not checked: the agent listens on port {driver.port} for scanners")
    where = f"{driver.host}:{driver.port}"
    try:
        socket.create_connection((driver.host, driver.port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        return Finding(f"{what} {where}", False, f"does not connect: {exc.strerror or exc}",
                       f"is it on and on the network? (ping {driver.host}); else fix its host/port in the config")
    return Finding(f"{what} {where}", True, "connects")


def _file_printer(what: str, driver: Any) -> Finding:
    path = Path(driver.path)
    if str(path).startswith("/dev/"):
        problem = _node_problem(what, str(path), os.W_OK)
        return problem or Finding(f"{what} {path}", True, "may be written")
    folder = path if path.is_dir() or not path.suffix else path.parent
    if not folder.exists():
        parent = next((p for p in folder.parents if p.exists()), Path("/"))
        if os.access(parent, os.W_OK):
            return Finding(f"{what} {path}", True, "will be created at start")
        return Finding(f"{what} {path}", False, f"{folder} does not exist and cannot be created",
                       f"sudo install -d -o {USER} {folder}")
    probe = folder / f".posedge-doctor-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return Finding(f"{what} {path}", False, f"cannot be written: {exc.strerror or exc}",
                       f"sudo chown {USER} {folder}")
    return Finding(f"{what} {path}", True, "may be written")


def _usb_printer(what: str, driver: Any) -> Finding:
    ids = f"{driver.vendor_id:04x}:{driver.product_id:04x}"
    try:
        import usb.core
    except ImportError:
        return Finding(f"{what} {ids}", False, "pyusb is not installed", "pip install pyusb (needs libusb-1.0)")
    if usb.core.find(idVendor=driver.vendor_id, idProduct=driver.product_id) is None:
        return Finding(f"{what} {ids}", False, "no such USB device", "plug it in (lsusb lists what is there)")
    return Finding(f"{what} {ids}", True, "present")


def _stdin(what: str, driver: Any) -> Finding:
    return Finding(what, None, "reads lines typed in the terminal; a service has none (remove it there)")


DEVICE_CHECKS: dict[tuple[str, str], Callable[[str, Any], Finding]] = {
    ("*", "serial"): _serial, ("scanner", "hid"): _event_node, ("scanner", "hidpos"): _event_node,
    ("scanner", "camera"): _camera, ("scanner", "tcp"): _tcp, ("scanner", "stdin"): _stdin,
    ("printer", "network"): _tcp, ("printer", "file"): _file_printer, ("printer", "usb"): _usb_printer,
}


def _node_problem(what: str, path: str, mode: int) -> Finding | None:
    """A finding when the device node is missing or the service's user may not open it."""
    where = f"{what} {path}"
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return Finding(where, False, "does not exist (unplugged, or another name)",
                       "plug it in; stable names: packaging/udev/99-posedge.rules (ls -l /dev/posedge/)")
    except OSError as exc:
        return Finding(where, False, f"cannot be looked at: {exc.strerror}")
    if not _user_may(path, info, mode):
        group = _group_name(info.st_gid)
        who = USER if _service_user() else "this user"
        fix = (f"sudo usermod -aG {group} {USER} && {RESTART}" if group in DEVICE_GROUPS
               else f"give the device the group {'/'.join(DEVICE_GROUPS)} (packaging/udev/99-posedge.rules)")
        return Finding(where, False, f"{who} may not open it (group {group}, mode {stat.filemode(info.st_mode)})", fix)
    return None


def _service_user() -> pwd.struct_passwd | None:
    """As root, permissions are judged for the service's user, who will open the devices."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        return None


def _user_may(path: str, info: os.stat_result, mode: int) -> bool:
    user = _service_user()
    if user is None:
        return os.access(path, mode)
    groups = {g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem} | {user.pw_gid}
    return _stat_allows(info, user.pw_uid, groups, mode)


def _stat_allows(info: os.stat_result, uid: int, gids: set[int], mode: int) -> bool:
    shift = 6 if info.st_uid == uid else 3 if info.st_gid in gids else 0
    bits = (info.st_mode >> shift) & 0o7
    wanted = (4 if mode & os.R_OK else 0) | (2 if mode & os.W_OK else 0)
    return bits & wanted == wanted


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


# -- broker, clock -------------------------------------------------------------------------------

def broker_finding(config: Config) -> Finding:
    if not config.mqtt.enabled:
        return Finding("broker", None, "not checked: [mqtt] enabled = false")
    s = link_settings(config)
    what = f"broker {config.mqtt.url}"
    outcome = mqtt_connect(s.host, s.port, f"{s.client_id}-doctor", s.protocol, s.tls, s.username, s.password)
    if outcome is None:
        tls = ", TLS handshake done" if s.tls else ""
        login = f" as {s.username}" if s.username else ""
        return Finding(what, True, f"reachable{tls}, connection accepted{login}")
    kind, detail = outcome
    fixes = {
        "unreachable": f"is the broker up and the network open? (nc -vz {s.host} {s.port}); else fix [mqtt] url",
        "tls": "the broker's certificate must be trusted by this PC (install the CA into /usr/local/share/"
               "ca-certificates and run sudo update-ca-certificates), or fix the host name in [mqtt] url",
        "refused": "set [mqtt] username and the password (password_file, or POSEDGE_MQTT_PASSWORD) HQ gave you",
        "silent": "something answers on that port but does not speak MQTT: check [mqtt] url",
    }
    return Finding(what, False, detail, fixes[kind])


def mqtt_connect(host: str, port: int, client_id: str, protocol: str, tls: bool, username: str | None,
                 password: str | None) -> tuple[str, str] | None:
    """A real paho connect with the agent's settings: None when accepted, else (kind, what happened)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    version = MQTTProtocolVersion.MQTTv5 if protocol == "5" else MQTTProtocolVersion.MQTTv311
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id, protocol=version)
    client.connect_timeout = CONNECT_TIMEOUT_S
    if tls:
        client.tls_set()
    if username is not None:
        client.username_pw_set(username, password)
    answer: list[Any] = []
    client.on_connect = lambda c, userdata, flags, reason_code, properties: answer.append(reason_code)
    try:
        client.connect(host, port, keepalive=10)
    except ssl.SSLError as exc:
        return "tls", f"TLS handshake failed: {exc.reason or exc}"
    except OSError as exc:
        return "unreachable", f"cannot reach {host}:{port}: {exc.strerror or exc}"
    try:
        deadline = time.monotonic() + 2 * CONNECT_TIMEOUT_S
        while not answer and time.monotonic() < deadline:
            client.loop(timeout=0.1)
    finally:
        client.disconnect()
    if not answer:
        return "silent", "connected, but no MQTT answer (CONNACK) came"
    if answer[0].is_failure:
        return "refused", f"the broker refused the connection: {answer[0]}"
    return None


def clock_finding(config: Config, time_url: str | None) -> Finding:
    """Skew against an HQ web address's Date header when given; MQTT and HQ's acks carry no time."""
    if time_url is None:
        return Finding("clock", None, "not checked against HQ: the broker and HQ's acks carry no time; "
                       "give HQ's web address with --time-url" + _ntp_note())
    try:
        started = time.time()
        with urlopen(Request(time_url, method="HEAD"), timeout=CONNECT_TIMEOUT_S) as answer:
            date = answer.headers.get("Date")
        ended = time.time()
    except OSError as exc:
        return Finding(f"clock against {time_url}", False, f"cannot ask: {exc}", "check the address and the network")
    if not date:
        return Finding(f"clock against {time_url}", None, "not checked: the answer has no Date header")
    skew = (started + ended) / 2 - parsedate_to_datetime(date).timestamp()
    tolerance = config.hq.clock_skew_s
    says = f"this PC is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} HQ (tolerance {tolerance} s)"
    if abs(skew) > tolerance:
        return Finding(f"clock against {time_url}", False, says,
                       "sudo timedatectl set-ntp true (and check the time zone: timedatectl status)")
    return Finding(f"clock against {time_url}", True, says)


def _ntp_note() -> str:
    if shutil.which("timedatectl") is None:
        return ""
    done = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"], capture_output=True,
                          text=True, timeout=5)
    value = done.stdout.strip()
    return {"yes": "; NTP says the clock is synchronised", "no": "; NTP says the clock is NOT synchronised"}.get(
        value, "")


# -- disk, database, service ---------------------------------------------------------------------

def disk_finding(config: Config) -> Finding:
    folder = next((p for p in [config.storage.path.parent, *config.storage.path.parents] if p.exists()), Path("/"))
    usage = shutil.disk_usage(folder)
    says = f"{usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.1f} GiB at {folder.resolve()}"
    if usage.free < DISK_MIN_FREE_BYTES or usage.free < DISK_MIN_FREE_RATIO * usage.total:
        return Finding("disk", False, says + " (too little: sales are refused when it is full)",
                       f"free space: du -xsh {folder.resolve()}/* | sort -h; sudo journalctl --vacuum-size=200M")
    return Finding("disk", True, says)


def database_finding(config: Config) -> Finding:
    path = config.storage.path
    what = f"database {path}"
    if not path.exists():
        return Finding(what, None, "not there yet (created at first start)")
    try:
        conn = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True, timeout=5)
        try:
            rows = [row[0] for row in conn.execute("PRAGMA quick_check")]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        rows = [str(exc)]
    if rows == ["ok"]:
        return Finding(what, True, "quick_check ok")
    lines = [line for line in "\n".join(rows).splitlines() if not line.startswith("***")]
    more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
    return Finding(what, False, f"damaged: {'; '.join(lines[:2])[:300]}{more}",
                   "stop the agent, copy the file with its -wal/-shm aside, restore last night's backup "
                   "(docs/operations.md, 'When storage fails')")


def unit_findings(config: Config) -> list[Finding]:
    if not UNIT_FILE.exists():
        return [Finding("service", None, f"{UNIT_FILE} is not installed (fine when run by hand)",
                        "sudo posedge service install")]
    findings = [_unit_devices_finding(config)]
    if shutil.which("systemctl") is None:
        return findings + [Finding("service", None, "not asked: systemctl is not here")]
    for verb, good in (("is-enabled", "enabled"), ("is-active", "active")):
        done = subprocess.run(["systemctl", verb, UNIT_NAME], capture_output=True, text=True, timeout=10)
        state = done.stdout.strip() or done.stderr.strip()
        if "not been booted with systemd" in state or "Failed to connect" in state:
            findings.append(Finding(f"service {verb}", None, "not asked: systemd is not running here"))
        elif state == good:
            findings.append(Finding(f"service {verb}", True, state))
        else:
            fix = "sudo systemctl enable posedge" if verb == "is-enabled" else \
                  "sudo systemctl start posedge; journalctl -u posedge -n 50 says why it stopped"
            findings.append(Finding(f"service {verb}", False, state or "unknown", fix))
    return findings


def _unit_devices_finding(config: Config) -> Finding:
    text = UNIT_FILE.read_text(encoding="utf-8", errors="replace")
    written = [line.partition("=")[2] for line in text.splitlines() if line.startswith("DeviceAllow=")]
    wanted = device_allow(config)
    if written == wanted:
        return Finding("service devices", True, f"the unit allows the {len(wanted)} device(s) the config names")
    return Finding("service devices", False, f"the unit allows {written or 'no device'}, the config names "
                   f"{wanted or 'none'}", "sudo posedge service install (writes the unit again for this config)")
