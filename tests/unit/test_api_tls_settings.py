"""``[api] tls_*`` and ``procedure.notifier_ca_file``: what loads, and the one-line error of what does not."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from services.procedure.notifier_summary import notifier_summary
from shared.config import ConfigError, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("LUCCS_"):
            monkeypatch.delenv(name)


@dataclass(frozen=True)
class Pems:
    ca: Path
    cert: Path  # certificate only
    key: Path
    combined: Path  # certificate and key in one file
    other_key: Path  # the key of another certificate
    encrypted_key: Path  # ``key``, encrypted with "secret"
    junk: Path


@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> Pems:
    folder = tmp_path_factory.mktemp("pems")
    ca = trustme.CA()
    ours, other = ca.issue_cert("localhost", "127.0.0.1"), ca.issue_cert("localhost")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    ours.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    ours.private_key_pem.write_to_path(str(folder / "key.pem"))
    ours.private_key_and_cert_chain_pem.write_to_path(str(folder / "combined.pem"))
    other.private_key_pem.write_to_path(str(folder / "other-key.pem"))
    key = serialization.load_pem_private_key(ours.private_key_pem.bytes(), None)
    (folder / "encrypted-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    ))
    (folder / "junk.pem").write_text("not a certificate\n", encoding="utf-8")
    return Pems(folder / "ca.pem", folder / "cert.pem", folder / "key.pem", folder / "combined.pem",
                folder / "other-key.pem", folder / "encrypted-key.pem", folder / "junk.pem")


def load(tmp_path: Path, api: str, procedure: str = "") -> Settings:
    config = tmp_path / "luccs.toml"
    config.write_text(f"[api]\n{api}\n[procedure]\n{procedure}\n", encoding="utf-8")
    return load_settings(config)


def refused(tmp_path: Path, api: str, procedure: str = "") -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, api, procedure)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def test_without_a_certificate_the_ports_are_plain_http() -> None:
    settings = load_settings()
    assert not settings.api.uses_tls
    assert settings.api.server_ssl_context() is None


def test_a_certificate_and_its_key_give_a_tls_1_2_server_context(pems: Pems, tmp_path: Path) -> None:
    settings = load(tmp_path, f'tls_cert_file = "{pems.cert}"\ntls_key_file = "{pems.key}"')
    context = settings.api.server_ssl_context()
    assert context is not None and settings.api.uses_tls
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE  # no client certificates asked for
    assert load(tmp_path, f'tls_cert_file = "{pems.combined}"').api.server_ssl_context() is not None


def test_a_client_ca_makes_every_connection_present_a_certificate(pems: Pems, tmp_path: Path) -> None:
    settings = load(tmp_path, f'tls_cert_file = "{pems.combined}"\ntls_client_ca_file = "{pems.ca}"')
    context = settings.api.server_ssl_context()
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED


def test_an_encrypted_key_opens_with_its_password_given_inline_or_as_a_file(pems: Pems, tmp_path: Path) -> None:
    files = f'tls_cert_file = "{pems.cert}"\ntls_key_file = "{pems.encrypted_key}"'
    assert load(tmp_path, f'{files}\ntls_key_password = "secret"').api.server_ssl_context() is not None
    secret = tmp_path / "tls-key-password"
    secret.write_text("secret\n", encoding="utf-8")
    settings = load(tmp_path, f'{files}\ntls_key_password_file = "{secret}"')
    assert settings.api.tls_key_password is not None
    assert settings.api.tls_key_password.get_secret_value() == "secret"


def test_each_bad_file_is_one_line_naming_it(pems: Pems, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"
    assert f"api.tls_cert_file: no such file: {missing}" in refused(tmp_path, f'tls_cert_file = "{missing}"')
    assert f"api.tls_key_file: no such file: {missing}" in refused(
        tmp_path, f'tls_cert_file = "{pems.cert}"\ntls_key_file = "{missing}"')
    message = refused(tmp_path, f'tls_cert_file = "{pems.cert}"\ntls_key_file = "{pems.other_key}"')
    assert f"api.tls_key_file {pems.other_key} does not match the certificate" in message
    message = refused(tmp_path, f'tls_cert_file = "{pems.cert}"\ntls_key_file = "{pems.encrypted_key}"')
    assert "the key is encrypted: give api.tls_key_password" in message
    message = refused(tmp_path, f'tls_cert_file = "{pems.cert}"\ntls_key_file = "{pems.encrypted_key}"\n'
                                'tls_key_password = "wrong"')
    assert "api.tls_key_password does not open the key" in message
    assert f"api.tls_cert_file {pems.junk}: no PEM certificate in it" in refused(
        tmp_path, f'tls_cert_file = "{pems.junk}"\ntls_key_file = "{pems.key}"')
    assert f"api.tls_key_file {pems.junk}: not a PEM private key" in refused(
        tmp_path, f'tls_cert_file = "{pems.cert}"\ntls_key_file = "{pems.junk}"')
    assert "no PEM private key in it: give api.tls_key_file" in refused(tmp_path, f'tls_cert_file = "{pems.cert}"')
    assert f"api.tls_client_ca_file {pems.junk}: no PEM CA certificate in it" in refused(
        tmp_path, f'tls_cert_file = "{pems.combined}"\ntls_client_ca_file = "{pems.junk}"')
    assert f"procedure.notifier_ca_file {pems.junk}: no PEM CA certificate in it" in refused(
        tmp_path, "", f'notifier_ca_file = "{pems.junk}"')


def test_tls_settings_without_the_certificate_are_refused(pems: Pems, tmp_path: Path) -> None:
    message = refused(tmp_path, f'tls_client_ca_file = "{pems.ca}"\ntls_key_password = "x"')
    assert "api.tls_key_password, api.tls_client_ca_file given without api.tls_cert_file" in message


def test_the_status_page_reads_an_https_notifier_with_its_ca(pems: Pems, tmp_path: Path) -> None:
    tls = f'tls_cert_file = "{pems.combined}"'
    summary = notifier_summary(load(tmp_path, tls, f'notifier_url = "https://localhost:8003"\n'
                                                   f'notifier_ca_file = "{pems.ca}"'))
    assert summary is not None and summary.url == "https://localhost:8003"
    assert notifier_summary(load(tmp_path, tls, 'notifier_url = ""')) is None
    with pytest.raises(ConfigError, match=r"procedure.notifier_url http://127.0.0.1:8003 is plain http but "
                                          r"api.tls_cert_file makes the notifier serve https"):
        notifier_summary(load(tmp_path, tls))  # the default URL is http


def test_a_wrong_password_that_decrypts_to_no_key_is_still_the_passwords_fault(
    pems: Pems, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """About one encrypted key in 300 decrypts under a wrong password past the padding check, and what comes out
    is no key: it was reported as "not a PEM private key" (and this file's test of a wrong password failed)."""
    import shared.tls

    def no_key(_data: bytes, _password: bytes | None) -> None:
        raise ValueError("Could not deserialize key data. The data may be in an incorrect format")

    monkeypatch.setattr(shared.tls, "load_pem_private_key", no_key)
    message = refused(tmp_path, f'tls_cert_file = "{pems.cert}"\ntls_key_file = "{pems.encrypted_key}"\n'
                                'tls_key_password = "wrong"')
    assert "api.tls_key_password does not open the key" in message
    assert f"api.tls_key_file {pems.junk}: not a PEM private key" in refused(
        tmp_path, f'tls_cert_file = "{pems.cert}"\ntls_key_file = "{pems.junk}"\ntls_key_password = "wrong"')
