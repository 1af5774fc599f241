"""TLS with a CA and client certificates, and user name and password, on a real mosquitto.

The test makes its own CA, a server certificate for 127.0.0.1 and client certificates (`cryptography`),
and starts mosquitto with two listeners: TLS that requires a client certificate and takes its CN as the
user name, and plain TCP with a password file. A real agent syncs over mqtts with its certificate to a
real `posedge-hq serve` that connects with its own; a wrong CA and a wrong password are reported in plain
words in `sync.last_error` while the till goes on selling.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import free_port
from posedge.agent.config import ConfigError, validate_config
from tests.sync.conftest import Broker, HqProcess, sync_config, wait_for
from tests.sync.test_uplink import post_sales, sync_status, wait_drained


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


class Authority:
    """A CA of the test's own, writing PEM files into `home`."""

    def __init__(self, home: Path, name: str) -> None:
        self.home = home
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                  key_encipherment=False, data_encipherment=False,
                                                  key_agreement=False, key_cert_sign=True, crl_sign=True,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
                     .sign(self.key, hashes.SHA256()))
        self.file = home / f"{name}.pem"
        self.file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, common_name: str, server: bool = False) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                   .issuer_name(self.name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                                  critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                         else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(
                ipaddress.ip_address("127.0.0.1"))]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        issued = Issued(self.home / f"{common_name}.crt", self.home / f"{common_name}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
        issued.key.chmod(0o600)
        return issued


class TlsBroker(Broker):
    """mosquitto with a TLS listener on `port` (client certificate required, its CN the user name) and a
    password listener on `password_port` (user store-1, password `PASSWORD`)."""

    PASSWORD = "s3cret-store-1"

    def __init__(self, home: Path, ca: Authority) -> None:
        self.ca = ca
        super().__init__(home)
        self.url = f"mqtts://127.0.0.1:{self.port}"

    def _configure(self, persistence: bool) -> list[str]:
        self.password_port = free_port()
        server = self.ca.issue("broker", server=True)
        passwords = self.home / "passwd"
        passwords.write_text("", encoding="utf-8")
        subprocess.run(["mosquitto_passwd", "-b", str(passwords), "store-1", self.PASSWORD], check=True,
                       capture_output=True, timeout=30)
        conf = self.home / "mosquitto.conf"
        conf.write_text(
            # As root mosquitto would read the password file as user mosquitto, which cannot enter pytest's temp dir.
            "user root\nper_listener_settings true\npersistence false\nlog_dest stderr\nlog_type error\n"
            "log_type warning\n"
            f"listener {self.port} 127.0.0.1\ncafile {self.ca.file}\ncertfile {server.cert}\nkeyfile {server.key}\n"
            "require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n"
            f"listener {self.password_port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}\n",
            encoding="utf-8")
        return ["mosquitto", "-c", str(conf)]


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    home = tmp_path / "pki"
    home.mkdir()
    return Authority(home, "posedge-test-ca")


@pytest.fixture
def tls_broker(tmp_path: Path, ca: Authority) -> Any:
    home = tmp_path / "tls-broker"
    home.mkdir()
    broker = TlsBroker(home, ca).start()
    yield broker
    broker.kill()


def tls_keys(broker: TlsBroker, ca_file: Path, client: Issued) -> str:
    return sync_config(broker, extra=f'ca_file = "{ca_file}"\ncert_file = "{client.cert}"\nkey_file = "{client.key}"\n')


def test_an_agent_syncs_over_mqtts_with_its_client_certificate_to_an_hq_with_its_own(
        agent_factory: Any, hq_factory: Any, tls_broker: TlsBroker, ca: Authority) -> None:
    hq: HqProcess = hq_factory(tls_broker)
    hq_cert = ca.issue("hq")
    hq.args += ["--ca", str(ca.file), "--cert", str(hq_cert.cert), "--key", str(hq_cert.key)]
    hq.start()
    agent = agent_factory(mqtt_keys=tls_keys(tls_broker, ca.file, ca.issue("store-1"))).start()
    sold = post_sales(agent, 5)
    wait_drained(agent)
    assert hq.sale_ids() == sold
    status = sync_status(agent)
    assert status["state"] == "connected" and status["broker"].startswith("mqtts://")


def test_a_broker_certificate_from_another_ca_is_refused_in_plain_words_and_the_till_sells_on(
        agent_factory: Any, tls_broker: TlsBroker, ca: Authority, tmp_path: Path) -> None:
    other = tmp_path / "other-pki"
    other.mkdir()
    stranger = Authority(other, "some-other-ca")
    agent = agent_factory(mqtt_keys=tls_keys(tls_broker, stranger.file, ca.issue("store-1"))).start()
    wait_for(lambda: "could not be verified" in str(sync_status(agent)["last_error"]), 20,
             f"the verification failure reported ({sync_status(agent)})")
    status = sync_status(agent)
    assert "certificate" in status["last_error"] and "ca_file" in status["last_error"]
    assert status["state"] in ("connecting", "offline")
    assert len(post_sales(agent, 5)) == 5  # checkouts go on


def test_a_wrong_password_is_reported_as_refused_credentials_and_the_right_one_from_a_file_connects(
        agent_factory: Any, tls_broker: TlsBroker, tmp_path: Path) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text("not-the-password\n", encoding="utf-8")
    plain = Broker.__new__(Broker)  # only for sync_config's url: the password listener of the same mosquitto
    plain.url = f"mqtt://127.0.0.1:{tls_broker.password_port}"
    agent = agent_factory(mqtt_keys=sync_config(plain, extra=f'username = "store-1"\npassword_file = "{secret}"\n'))
    agent.start()
    wait_for(lambda: "refused the credentials" in str(sync_status(agent)["last_error"]), 20,
             f"the refusal reported ({sync_status(agent)})")
    assert len(post_sales(agent, 3)) == 3
    assert "not-the-password" not in agent.log_text()
    agent.stop()
    secret.write_text(TlsBroker.PASSWORD + "\n", encoding="utf-8")
    agent.start()
    wait_for(lambda: sync_status(agent)["state"] == "connected", 20, f"connected ({sync_status(agent)})")


@pytest.mark.parametrize("mqtt,problem", [
    ({"url": "mqtts://h:8883", "cert_file": "/x.crt"}, "cert_file and key_file go together"),
    ({"url": "mqtts://h:8883", "ca_file": "/nonexistent/ca.pem"}, "ca_file '/nonexistent/ca.pem' does not exist"),
])
def test_tls_keys_are_validated_and_the_error_names_the_key(mqtt: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config({"mqtt": mqtt}, "x.toml")
    assert f"x.toml: mqtt: {problem}" in str(caught.value)
