"""Unit tests of the Kafka TLS and SASL settings (shared/config.py) and the client options built from them."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest
import trustme
from aiokafka.errors import IllegalSaslStateError, KafkaConnectionError, SaslAuthenticationFailed
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    PrivateFormat,
    load_pem_private_key,
)
from pydantic import SecretStr, ValidationError

from shared.config import ConfigError, KafkaSettings, load_settings
from shared.kafka import KafkaAccessDenied, access_denied, connection_options


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("LUCCS_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a client certificate with its key apart, one with its key inside, and an encrypted key."""
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    client = ca.issue_cert("luccs-client")
    files = {name: directory / name for name in ("ca.pem", "client.crt", "client.key", "client.pem", "enc.key")}
    ca.cert_pem.write_to_path(str(files["ca.pem"]))
    client.cert_chain_pems[0].write_to_path(str(files["client.crt"]))
    client.private_key_pem.write_to_path(str(files["client.key"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(files["client.pem"]))
    key = load_pem_private_key(client.private_key_pem.bytes(), None)  # trustme gives it unencrypted only
    files["enc.key"].write_bytes(
        key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"key-secret"))
    )
    return files


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "luccs.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_plaintext_by_default() -> None:
    kafka = KafkaSettings()
    assert kafka.security_protocol == "PLAINTEXT"
    assert kafka.ssl_check_hostname is True
    assert kafka.ssl_context() is None
    assert connection_options(kafka) == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "PLAINTEXT"}


def test_sasl_ssl_from_the_file_and_the_password_from_the_environment(
    tmp_path: Path, pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LUCCS_KAFKA__SASL_PASSWORD", "from-env")
    path = write(tmp_path, f"""
[kafka]
bootstrap_servers = "kafka-1:9093,kafka-2:9093"
security_protocol = "SASL_SSL"
ssl_cafile = "{pki['ca.pem']}"
sasl_mechanism = "SCRAM-SHA-512"
sasl_username = "luccs-detector"
""")
    kafka = load_settings(path).kafka
    assert kafka.sasl_password == SecretStr("from-env")
    assert "from-env" not in repr(kafka)
    options = connection_options(kafka)
    context = options.pop("ssl_context")
    assert options == {
        "bootstrap_servers": "kafka-1:9093,kafka-2:9093",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "luccs-detector",
        "sasl_plain_password": "from-env",
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert len(context.get_ca_certs()) == 1  # the configured CA only, not the system's


def test_mutual_tls_with_the_key_apart_inside_or_encrypted(pki: dict[str, Path]) -> None:
    for certfile, keyfile, password in [
        (pki["client.crt"], pki["client.key"], None),
        (pki["client.pem"], None, None),
        (pki["client.crt"], pki["enc.key"], SecretStr("key-secret")),
    ]:
        kafka = KafkaSettings(
            security_protocol="SSL", ssl_cafile=str(pki["ca.pem"]), ssl_certfile=str(certfile),
            ssl_keyfile=str(keyfile) if keyfile else None, ssl_key_password=password, ssl_check_hostname=False,
        )
        options = connection_options(kafka)
        assert options["security_protocol"] == "SSL"
        assert options["ssl_context"].check_hostname is False
        assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED  # the certificate is still verified
        assert "sasl_mechanism" not in options


def test_ssl_without_a_cafile_trusts_the_system_cas() -> None:
    context = KafkaSettings(security_protocol="SSL").ssl_context()
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    ("kafka", "key", "message"),
    [
        (
            "security_protocol = 'SASL_SSL'",
            "kafka", "SASL_SSL needs kafka.sasl_mechanism, kafka.sasl_username, kafka.sasl_password",
        ),
        (
            "security_protocol = 'SASL_PLAINTEXT'\nsasl_mechanism = 'PLAIN'\nsasl_username = 'u'",
            "kafka", "SASL_PLAINTEXT needs kafka.sasl_password",
        ),
        ("sasl_username = 'u'\nsasl_password = 'p'", "kafka", "given but kafka.security_protocol is PLAINTEXT"),
        (
            "security_protocol = 'SSL'\nsasl_mechanism = 'PLAIN'",
            "kafka", "kafka.sasl_mechanism given but kafka.security_protocol is SSL",
        ),
        (
            "security_protocol = 'SASL_SSL'\nsasl_mechanism = 'GSSAPI'\nsasl_username = 'u'\nsasl_password = 'p'",
            "kafka.sasl_mechanism", "'PLAIN', 'SCRAM-SHA-256' or 'SCRAM-SHA-512'",
        ),
        ("security_protocol = 'TLS'", "kafka.security_protocol", "'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT' or 'SASL_SSL'"),
        ("security_protocol = 'SSL'\nssl_cafile = '/no/such/ca.pem'", "kafka.ssl_cafile", "no such file"),
        ("security_protocol = 'SSL'\nssl_certfile = '/tmp'", "kafka.ssl_certfile", "not a file: /tmp"),
        ("ssl_cafile = '{ca}'", "kafka", "kafka.ssl_cafile given but kafka.security_protocol is PLAINTEXT"),
        (
            "security_protocol = 'SSL'\nssl_keyfile = '{key}'",
            "kafka", "kafka.ssl_keyfile given without kafka.ssl_certfile",
        ),
        (
            "security_protocol = 'SSL'\nssl_key_password = 'x'",
            "kafka", "kafka.ssl_key_password given without kafka.ssl_certfile",
        ),
        ("security_protocol = 'SSL'\nssl_cafile = '{key}'", "kafka", "kafka.ssl_cafile {key}: not a PEM CA bundle"),
        (
            "security_protocol = 'SSL'\nssl_certfile = '{crt}'",
            "kafka", "kafka.ssl_certfile {crt}: cannot load the client certificate",
        ),
        (
            "security_protocol = 'SSL'\nssl_certfile = '{crt}'\nssl_keyfile = '{enc}'\nssl_key_password = 'wrong'",
            "kafka", "wrong kafka.ssl_key_password",
        ),
    ],
)
def test_bad_combinations_are_one_line_config_errors(
    tmp_path: Path, pki: dict[str, Path], kafka: str, key: str, message: str
) -> None:
    paths = {"ca": pki["ca.pem"], "key": pki["client.key"], "crt": pki["client.crt"], "enc": pki["enc.key"]}
    path = write(tmp_path, "[kafka]\n" + kafka.format(**paths) + "\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: {key}: ")
    assert message.format(**paths) in text


def test_an_unreadable_file_is_a_config_error(
    tmp_path: Path, pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "ca.pem"
    secret.write_bytes(pki["ca.pem"].read_bytes())
    secret.chmod(0)
    if os.geteuid() == 0:  # root reads every file: let the access check answer as for anyone else
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(secret) else real_access(
            path, mode))
    with pytest.raises(ValidationError, match="not readable"):
        KafkaSettings(security_protocol="SSL", ssl_cafile=str(secret))


def test_the_environment_configures_tls_and_sasl(pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUCCS_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("LUCCS_KAFKA__SSL_CAFILE", str(pki["ca.pem"]))
    monkeypatch.setenv("LUCCS_KAFKA__SSL_CHECK_HOSTNAME", "false")
    monkeypatch.setenv("LUCCS_KAFKA__SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("LUCCS_KAFKA__SASL_USERNAME", "alice")
    monkeypatch.setenv("LUCCS_KAFKA__SASL_PASSWORD", "alice-secret")
    kafka = load_settings().kafka
    assert (kafka.security_protocol, kafka.sasl_mechanism, kafka.sasl_username) == ("SASL_SSL", "PLAIN", "alice")
    assert kafka.ssl_check_hostname is False
    assert connection_options(kafka)["sasl_plain_password"] == "alice-secret"


def test_refusals_that_retrying_will_not_fix() -> None:
    kafka = KafkaSettings(bootstrap_servers="k:9093", security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                          sasl_username="alice", sasl_password=SecretStr("p4ss-w0rd"))
    denied = access_denied(kafka, SaslAuthenticationFailed("Authentication failed: Invalid username or password"))
    assert isinstance(denied, KafkaAccessDenied)
    assert "Kafka at k:9093 refused the SASL PLAIN login of 'alice'" in str(denied)
    assert "kafka.sasl_password" in str(denied)
    assert "p4ss-w0rd" not in str(denied)
    assert "on that port" in str(access_denied(kafka, IllegalSaslStateError()))
    unverified = ssl.SSLCertVerificationError(1, "certificate verify failed")
    unverified.verify_message = "unable to get local issuer certificate"
    assert "kafka.ssl_cafile" in str(access_denied(kafka, unverified))
    # May pass: a broker that is starting or restarting.
    assert access_denied(kafka, ConnectionRefusedError(111, "refused")) is None
    assert access_denied(kafka, KafkaConnectionError("Connection at k:9093 closed")) is None


def test_an_empty_sasl_password_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # An empty secret (a variable set from a missing secret) must not get as far as the broker.
    monkeypatch.setenv("LUCCS_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("LUCCS_KAFKA__SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("LUCCS_KAFKA__SASL_USERNAME", "alice")
    monkeypatch.setenv("LUCCS_KAFKA__SASL_PASSWORD", "")
    with pytest.raises(ConfigError, match="sasl_password"):
        load_settings()
