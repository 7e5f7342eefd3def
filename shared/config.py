"""Configuration: one TOML file plus ``LUCCS_``-prefixed environment overrides (``__`` for nesting).

Build it with :func:`load_settings` and pass it down; there is no module-level settings object.
Every key has a default so an empty file (or none) runs the system on loopback.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import socket
import ssl
import tomllib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from shared.events import Component, Language
from shared.roles import Role, parse_tokens
from shared.tls import client_context, server_context

CONFIG_ENV = "LUCCS_CONFIG"


def _is_secret(annotation: object) -> bool:
    return annotation is SecretStr or SecretStr in getattr(annotation, "__args__", ())


def _read_secret_file(path: object, key: str) -> str:
    try:
        return Path(str(path)).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{key}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from exc


class _Section(BaseModel):
    """A configuration section. Every secret setting ``<name>`` may instead be given as ``<name>_file``
    (or ``LUCCS_<SECTION>__<NAME>_FILE``): the path of a file read at start. A single secret is the file's
    text without surrounding whitespace; a list of tokens is one entry per line (blank lines and lines
    starting with ``#`` skipped)."""

    model_config = ConfigDict(extra="forbid")
    _file_secrets: ClassVar[frozenset[str]] = frozenset()  # secrets that are not SecretStr (e.g. database_url)

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        values = dict(values)
        for key in [k for k in values if isinstance(k, str) and k.endswith("_file")]:
            name = key.removesuffix("_file")
            known = cls.model_fields.get(name)
            if known is None or not (_is_secret(known.annotation) or name in cls._file_secrets):
                continue
            if values.get(name) is not None:
                raise ValueError(f"give {name} or {key}, not both")
            path = values.pop(key)
            if path is None:
                continue
            text = _read_secret_file(path, key)
            if get_origin(known.annotation) is list:
                values[name] = [line.strip() for line in text.splitlines()
                                if line.strip() and not line.lstrip().startswith("#")]
            else:
                values[name] = text.strip()
        return values


def _readable_file(path: str | None) -> str | None:
    if path is None:
        return None
    if not Path(path).is_file():
        raise ValueError(f"{'not a file' if Path(path).exists() else 'no such file'}: {path}")
    if not os.access(path, os.R_OK):
        raise ValueError(f"file not readable by this process: {path}")
    return path


ReadableFile = Annotated[str | None, AfterValidator(_readable_file)]

KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

_KAFKA_TLS_FILES = ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password")
_KAFKA_SASL_KEYS = ("sasl_mechanism", "sasl_username", "sasl_password")


def _keys(names: list[str]) -> str:
    return ", ".join(f"kafka.{name}" for name in names)


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = Field("luccs", pattern=r"^[A-Za-z0-9._-]+$")
    partitions: int = Field(3, ge=1, description="Partitions of the topics created at startup.")
    replication_factor: int = Field(
        1, ge=1, description="Replicas of each topic created at startup; at most the cluster's broker count (3 in "
        "production, so that one broker may die).",
    )
    min_insync_replicas: int = Field(
        1, ge=1, description="Replicas that must have a message before the broker acknowledges it (acks=all), set "
        "on the topics created at startup; at most replication_factor (2 with 3 replicas).",
    )
    security_protocol: KafkaSecurityProtocol = Field(
        "PLAINTEXT", description="How every Kafka client connects: TLS (SSL, SASL_SSL), SASL login (SASL_*), both."
    )
    ssl_cafile: ReadableFile = Field(
        None, description="PEM bundle of the CAs the broker's certificate must chain to (default: the system's)."
    )
    ssl_certfile: ReadableFile = Field(
        None, description="PEM client certificate (mutual TLS), its key included unless ssl_keyfile is given."
    )
    ssl_keyfile: ReadableFile = Field(None, description="PEM key of ssl_certfile, if not in that file.")
    ssl_key_password: SecretStr | None = Field(None, description="Password of an encrypted client key.")
    ssl_check_hostname: bool = Field(
        True, description="Whether the broker's certificate must name the host connected to (TLS only)."
    )
    sasl_mechanism: SaslMechanism | None = Field(None, description="SASL mechanism (SASL_* protocols only).")
    sasl_username: str | None = Field(None, min_length=1, description="SASL user (SASL_* protocols only).")
    sasl_password: SecretStr | None = Field(None, min_length=1, description="SASL password (SASL_* protocols only).")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @model_validator(mode="after")
    def _security_fits_the_protocol(self) -> KafkaSettings:
        protocol = self.security_protocol
        if self.uses_sasl:
            missing = [key for key in _KAFKA_SASL_KEYS if getattr(self, key) is None]
            if missing:
                raise ValueError(f"kafka.security_protocol {protocol} needs {_keys(missing)}")
        else:
            stray = [key for key in _KAFKA_SASL_KEYS if getattr(self, key) is not None]
            if stray:
                raise ValueError(f"{_keys(stray)} given but kafka.security_protocol is {protocol}: "
                                 "use SASL_SSL (or SASL_PLAINTEXT) to log in with SASL")
        if not self.uses_tls:
            stray = [key for key in _KAFKA_TLS_FILES if getattr(self, key) is not None]
            if stray:
                raise ValueError(f"{_keys(stray)} given but kafka.security_protocol is {protocol}: "
                                 "use SSL (or SASL_SSL) to connect with TLS")
            return self
        if self.ssl_certfile is None:
            stray = [key for key in ("ssl_keyfile", "ssl_key_password") if getattr(self, key) is not None]
            if stray:
                raise ValueError(
                    f"{_keys(stray)} given without kafka.ssl_certfile (the client certificate it belongs to)"
                )
        self.ssl_context()  # a CA, certificate or key that does not load is a configuration error, not a retry
        return self

    @model_validator(mode="after")
    def _insync_within_replicas(self) -> KafkaSettings:
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError(f"kafka.min_insync_replicas ({self.min_insync_replicas}) must not exceed "
                             f"kafka.replication_factor ({self.replication_factor})")
        return self

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of every Kafka client, or None without TLS.

        The broker's certificate must chain to ``ssl_cafile`` (else to the system's CAs) and, unless
        ``ssl_check_hostname`` is off, name the host connected to; ``ssl_certfile`` is presented when set.
        Raises ValueError naming the file that does not load.
        """
        if not self.uses_tls:
            return None
        try:
            context = ssl.create_default_context(cafile=self.ssl_cafile)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"kafka.ssl_cafile {self.ssl_cafile}: not a PEM CA bundle ({exc})") from exc
        context.check_hostname = self.ssl_check_hostname
        if self.ssl_certfile is not None:
            password = self.ssl_key_password.get_secret_value() if self.ssl_key_password else None
            try:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile, password)
            except (ssl.SSLError, OSError) as exc:
                key = f" with key {self.ssl_keyfile}" if self.ssl_keyfile else ""
                raise ValueError(
                    f"kafka.ssl_certfile {self.ssl_certfile}{key}: cannot load the client certificate and its "
                    f"key (not PEM, not matching, or a wrong kafka.ssl_key_password: {exc})"
                ) from exc
        return context

    def topic(self, name: str) -> str:
        """Full name of a contract topic, e.g. ``topic("availability")`` -> ``luccs.availability.v1``."""
        return f"{self.topic_prefix}.{name}.v1"

    @property
    def availability_topic(self) -> str:
        return self.topic("availability")

    @property
    def procedures_topic(self) -> str:
        return self.topic("procedures")

    @property
    def advisories_topic(self) -> str:
        return self.topic("advisories")

    @property
    def eos_topic(self) -> str:
        return self.topic("eos")

    @property
    def deliveries_topic(self) -> str:
        return self.topic("deliveries")

    @property
    def deadletter_topic(self) -> str:
        return self.topic("deadletter")


_ENTRY_FORMAT = "each entry '[name:]token' or '[name:]sha256:<hex>' (shared/roles.py)"


class ApiSettings(_Section):
    viewer_tokens: list[SecretStr] = Field(
        default_factory=list, description=f"Bearer tokens of viewers (status, national procedures); {_ENTRY_FORMAT}."
    )
    operator_tokens: list[SecretStr] = Field(
        default_factory=list, description=f"Bearer tokens of Servicedesk operators (everything); {_ENTRY_FORMAT}."
    )
    bureau_tokens: list[SecretStr] = Field(
        default_factory=list,
        description=f"Bearer tokens of the Bureau de recette (reads everything; broadcasts); {_ENTRY_FORMAT}.",
    )
    read_tokens: list[SecretStr] = Field(
        default_factory=list, description="Former name of viewer tokens: still accepted, as viewer tokens."
    )
    read_requires_token: bool = Field(
        False, description="Whether the status and national procedures need a token; EO data always does."
    )
    host: str = "127.0.0.1"
    auth_failure_limit: int = Field(
        10, ge=1, description="Failed authentications one client address may make per window before a 429."
    )
    auth_failure_window_s: float = Field(60.0, gt=0, description="The window of auth_failure_limit, in seconds.")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Larger request bodies are refused (413).")
    tls_cert_file: ReadableFile = Field(
        None, description="PEM certificate (chain) the three services serve https with; unset: plain http.",
    )
    tls_key_file: ReadableFile = Field(None, description="PEM private key of tls_cert_file, if not in that file.")
    tls_key_password: SecretStr | None = Field(None, description="Password of an encrypted tls_key_file.")
    tls_client_ca_file: ReadableFile = Field(
        None, description="PEM CA bundle: when set, every connection to the services' ports (every route) must "
        "present a client certificate chaining to it (mutual TLS).",
    )

    @model_validator(mode="after")
    def _tokens_parse(self) -> ApiSettings:
        roles: dict[bytes, Role] = {}
        for role, entries in self.token_entries().items():
            for token in parse_tokens(entries, role):
                if roles.setdefault(token.digest, role) != role:
                    raise ValueError(f"one token is given as both a {roles[token.digest]} and a {role} token")
        return self

    @model_validator(mode="after")
    def _tls_loads(self) -> ApiSettings:
        if self.tls_cert_file is None:
            stray = [f"api.{key}" for key in ("tls_key_file", "tls_key_password", "tls_client_ca_file")
                     if getattr(self, key) is not None]
            if stray:
                raise ValueError(f"{', '.join(stray)} given without api.tls_cert_file (the certificate it goes with)")
            return self
        self.server_ssl_context()  # a certificate that does not load is a configuration error, said at start
        return self

    @property
    def uses_tls(self) -> bool:
        return self.tls_cert_file is not None

    def server_ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of the services' ports, or None for plain http; raises ValueError saying which
        file does not load."""
        if self.tls_cert_file is None:
            return None
        password = self.tls_key_password.get_secret_value() if self.tls_key_password else None
        return server_context(cert_file=self.tls_cert_file, key_file=self.tls_key_file, password=password,
                              client_ca_file=self.tls_client_ca_file)

    def client_ssl_context(self, *, ca_file: str | None, ca_setting: str) -> ssl.SSLContext:
        """The TLS context of a call to another service's https port: trusting ``ca_file`` (else the system's
        CAs), presenting this configuration's own certificate if that service asks for one."""
        password = self.tls_key_password.get_secret_value() if self.tls_key_password else None
        return client_context(ca_file=ca_file, ca_setting=ca_setting, cert_file=self.tls_cert_file,
                              key_file=self.tls_key_file, password=password)

    def token_entries(self) -> dict[Role, list[SecretStr]]:
        """The configured tokens by role (read_tokens counted as viewer tokens)."""
        return {Role.VIEWER: [*self.viewer_tokens, *self.read_tokens], Role.OPERATOR: list(self.operator_tokens),
                Role.BUREAU: list(self.bureau_tokens)}


ProbeKind = Literal["http", "as4", "tcp", "tls", "domibus"]
"""How a target is probed (section 5 of the product): the one list, for the settings and the detector."""


class TargetSettings(_Section):
    id: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9._:-]+$")
    component: Component
    probe: ProbeKind = "http"
    url: str = Field(..., min_length=1)
    interval_s: float | None = Field(None, gt=0)
    retry_interval_s: float | None = Field(
        None, gt=0,
        description="Probe pace while a change is being confirmed (default: the detector's, else interval_s / 5).",
    )
    timeout_s: float | None = Field(None, gt=0)
    failure_threshold: int | None = Field(None, ge=1)
    success_threshold: int | None = Field(None, ge=1)
    degraded_latency_ms: float | None = Field(
        None, gt=0, description="Latency above which an up target is reported degraded (default: the detector's)."
    )
    method: str = Field("GET", pattern=r"^[A-Z]+$", description="HTTP method of the http probe.")
    expected_status: list[int] | None = Field(
        None, min_length=1, description="Statuses the http probe accepts as up (default: any 2xx)."
    )
    body_contains: str | None = Field(None, min_length=1, description="Text the http probe's answer must contain.")
    ca_file: str | None = Field(None, description="PEM bundle of the CAs to trust for this target (default: system).")
    client_cert_file: str | None = Field(None, description="PEM client certificate for mutual TLS.")
    client_key_file: str | None = Field(None, description="PEM key of the client certificate, if not in that file.")
    username: str | None = Field(None, description="HTTP basic auth user (e.g. the Domibus monitoring API).")
    password: SecretStr | None = Field(None, description="HTTP basic auth password.")
    as4_from_party_id: str | None = Field(None, description="AS4 ping sender PartyId (default: the detector's).")
    as4_from_party_type: str | None = None
    as4_from_role: str | None = None
    as4_to_party_id: str | None = Field(None, description="AS4 ping receiver PartyId (default: the detector's).")
    as4_to_party_type: str | None = None
    as4_to_role: str | None = None
    as4_signing: bool | None = Field(
        None, description="Sign the AS4 ping and require a signed, matching receipt (default: the detector's)."
    )
    as4_key_file: str | None = Field(
        None, description="Our AS4 signing key: a PEM private key, or a PKCS#12 file (.p12/.pfx) with its certificate."
    )
    as4_key_password: SecretStr | None = Field(
        None, description="Password of as4_key_file (give it from the environment or as4_key_password_file)."
    )
    as4_cert_file: str | None = Field(
        None, description="Our AS4 signing certificate (PEM); may be left out when as4_key_file is PKCS#12."
    )
    as4_partner_cert_file: str | None = Field(
        None, description="The certificate (PEM) the partner MSH must sign its receipts with."
    )
    as4_trust_ca_file: str | None = Field(
        None, description="CA certificates (PEM) the receipt's signing certificate must chain to (instead of pinning)."
    )


_EBMS_CORE = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704"
_UNREGISTERED_PARTY_TYPE = "urn:oasis:names:tc:ebcore:partyid-type:unregistered"


def _default_instance_id() -> str:
    return socket.gethostname() or "detector"


def _process_instance_id() -> str:
    """Unique per process: two procedure services on one host (or two containers whose PID is 1) differ."""
    return _instance_id_of(os.getpid())


@functools.cache
def _instance_id_of(pid: int) -> str:
    # The same for every Settings of one process; a random part because PIDs repeat across containers.
    return f"{socket.gethostname() or 'procedure'}-{pid}-{secrets.token_hex(3)}"


class DetectorSettings(_Section):
    _file_secrets: ClassVar[frozenset[str]] = frozenset({"database_url"})

    instance_id: str = Field(default_factory=_default_instance_id, min_length=1)
    port: int = Field(8001, ge=0, le=65535)
    database_url: str | None = None
    state_retention_days: int = Field(
        7, ge=1, description="Saved target states of other instance ids not saved for this long are deleted."
    )
    interval_s: float = Field(5.0, gt=0)
    retry_interval_s: float | None = Field(
        None, gt=0, description="Probe pace while a streak of probes disagreeing with the state runs (or the state is "
        "undecided), so that a change is confirmed sooner; at most interval_s. None: interval_s / 5.",
    )
    timeout_s: float = Field(2.0, gt=0)
    failure_threshold: int = Field(3, ge=1)
    success_threshold: int = Field(2, ge=1)
    heartbeat_s: float = Field(15.0, gt=0, description="How often every target's state is re-published.")
    publish_timeout_s: float = Field(
        10.0, gt=0, description="A publication the broker has not acknowledged by then is retried later."
    )
    targets: list[TargetSettings] = Field(default_factory=list)
    eo_targets: bool = Field(True, description="Probe the AS4 endpoint of every EO in the registry topic.")
    vantage_points: int = Field(
        0, ge=0, description="Detector instances probing each EO endpoint, chosen by rendezvous hashing over the "
        "live instances (configured targets: every instance); 0 = every instance probes every EO endpoint.",
    )
    vantage_timeout_s: float = Field(
        45.0, gt=0, description="An instance whose heartbeats are missed this long is gone: the others take over "
        "its share of EO endpoints (with vantage_points).",
    )
    max_concurrency: int = Field(500, ge=1, description="Probes in flight at once, over all targets.")
    workers: int = Field(
        1, ge=1, le=64, description="Probe processes (one per core): the targets are shared among them, results "
        "come back to the detector process; 1 = probes run in the detector process itself.",
    )
    per_host_limit: int = Field(20, ge=1, description="Probes in flight at once towards one host:port.")
    max_response_bytes: int = Field(1_048_576, ge=1024, description="Larger answers are not read (invalid).")
    degraded_latency_ms: float | None = Field(None, gt=0, description="Default latency bound of 'degraded'.")
    cert_warning_days: list[int] = Field(
        default_factory=lambda: [30, 14, 7], description="Days before certificate expiry at which to warn."
    )
    ca_file: str | None = Field(None, description="Default CA bundle of every target (default: system).")
    client_cert_file: str | None = Field(None, description="Default client certificate (mutual TLS), EOs included.")
    client_key_file: str | None = None
    as4_from_party_id: str = Field("luccs-fallback", min_length=1, description="PartyId the AS4 ping is sent from.")
    as4_from_party_type: str = _UNREGISTERED_PARTY_TYPE
    as4_from_role: str = f"{_EBMS_CORE}/initiator"
    as4_to_party_id: str = Field("LUCCS", min_length=1, description="PartyId of the ADA MSH (as4 targets).")
    as4_to_party_type: str = _UNREGISTERED_PARTY_TYPE
    as4_to_role: str = f"{_EBMS_CORE}/responder"
    eo_party_id_type: str = Field(
        "urn:oasis:names:tc:ebcore:partyid-type:eu-customs:EORI",
        description="PartyId type of an EO's EORI when its own AS4 endpoint is pinged.",
    )
    as4_signing: bool = Field(
        False, description="Sign AS4 pings and require signed, matching receipts (configured targets; EO targets "
        "too when as4_trust_ca_file is set)."
    )
    as4_key_file: str | None = Field(
        None, description="Default AS4 signing key: a PEM private key, or a PKCS#12 file (.p12/.pfx)."
    )
    as4_key_password: SecretStr | None = Field(
        None, description="Password of as4_key_file (LUCCS_DETECTOR__AS4_KEY_PASSWORD or as4_key_password_file)."
    )
    as4_cert_file: str | None = Field(None, description="Default AS4 signing certificate (PEM).")
    as4_partner_cert_file: str | None = Field(
        None, description="Default certificate (PEM) receipts must be signed with (configured targets only)."
    )
    as4_trust_ca_file: str | None = Field(
        None, description="Default CA certificates (PEM) a receipt's signing certificate must chain to."
    )

    @model_validator(mode="after")
    def _unique_target_ids(self) -> DetectorSettings:
        ids = [t.id for t in self.targets]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate detector target ids: {', '.join(duplicates)}")
        return self

    @model_validator(mode="after")
    def _vantage_timeout_beyond_heartbeats(self) -> DetectorSettings:
        # Instances announce themselves through their heartbeats: a shorter timeout drops live ones.
        if self.vantage_points and self.vantage_timeout_s <= self.heartbeat_s:
            raise ValueError(f"detector.vantage_timeout_s ({self.vantage_timeout_s:g}) must exceed "
                             f"detector.heartbeat_s ({self.heartbeat_s:g})")
        return self

    @model_validator(mode="after")
    def _retry_within_interval(self) -> DetectorSettings:
        # Retrying slower than the regular pace would make confirming a change slower than not retrying.
        if self.retry_interval_s is not None and self.retry_interval_s > self.interval_s:
            raise ValueError(f"detector.retry_interval_s ({self.retry_interval_s:g}) must not exceed "
                             f"detector.interval_s ({self.interval_s:g})")
        for target in self.targets:
            if target.retry_interval_s is None and self.retry_interval_s is None:
                continue  # derived from the target's interval: always within it
            interval = target.interval_s or self.interval_s
            retry = target.retry_interval_s or self.retry_interval_s
            if retry is not None and retry > interval:
                inherited = " (from [detector])" if target.retry_interval_s is None else ""
                raise ValueError(f"detector target {target.id!r}: retry_interval_s ({retry:g}){inherited} must not "
                                 f"exceed its interval_s ({interval:g})")
        return self


class ProcedureSettings(_Section):
    _file_secrets: ClassVar[frozenset[str]] = frozenset({"database_url"})

    port: int = Field(8002, ge=0, le=65535)
    database_url: str | None = None
    instance_id: str = Field(
        default_factory=_process_instance_id, min_length=1, max_length=200,
        description="This instance's name in the leadership lease and the status API; default: host-pid-random.",
    )
    failover_s: float = Field(
        5.0, ge=1.0, le=300.0,
        description="Bound on the time a standby takes to lead after the leader died or was cut off (PostgreSQL); "
        "the lease lasts 60% of it and is renewed every 10%.",
    )
    mode: Literal["auto", "confirm"] = "auto"
    stale_after_s: float = Field(60.0, gt=0)
    quorum: float | None = Field(
        None, gt=0.5, le=1, description="Share of fresh vantage points that must agree; None = strict majority."
    )
    tick_s: float = Field(2.0, gt=0, description="How often staleness and advisories are re-evaluated.")
    maintenance_reminders_s: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [172800, 3600],
        description="Lead times (seconds before a maintenance window's start) at which EOs are reminded of it.",
    )
    notifier_url: str | None = Field(
        "http://127.0.0.1:8003", description="Where the status page reads the delivery summary; None hides it."
    )
    notifier_ca_file: ReadableFile = Field(
        None, description="PEM CA bundle an https notifier_url must chain to (default: the system's CAs).",
    )
    notifier_token: SecretStr | None = Field(
        None, description="Token the console shows the notifier: a viewer token reads the delivery summary; "
        "the fan-out progress and the times to first notice need an operator or bureau token there.",
    )
    console_language: Language = Field(
        Language.EN, description="Language the Servicedesk console (/) opens in; its switch offers fr, en and de.",
    )
    sealing_key: SecretStr | None = Field(
        None, description="Fernet key sealing EO webhook secrets at rest; default: generated in data_dir."
    )
    import_max_bytes: int = Field(
        268_435_456, ge=1024, description="Largest body of POST /api/v1/eos:import (streamed, never held whole).",
    )
    import_chunk_lines: int = Field(
        1000, ge=1, le=10_000, description="Lines of an EO import written per database transaction.",
    )


class NotifierSettings(_Section):
    _file_secrets: ClassVar[frozenset[str]] = frozenset({"database_url"})

    port: int = Field(8003, ge=0, le=65535)
    database_url: str | None = None
    servicedesk_email: str | None = None
    bureau_email: str | None = None
    allow_insecure_webhooks: bool = False
    allow_private_webhooks: bool = False
    webhook_timeout_s: float = Field(5.0, gt=0)
    max_attempts: int = Field(6, ge=1)
    backoff_base_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(300.0, gt=0)
    concurrency: int = Field(200, ge=1)
    instance_id: str = Field(
        default_factory=_default_instance_id, min_length=1,
        description="Owner name of the deliveries this process claims; give each notifier sharing a database its own.",
    )
    claim_lease_s: float = Field(
        60.0, ge=3, description="How long a delivery a notifier claimed stays its own without renewal (renewed every "
        "third of it): the deliveries of a notifier that dies are sent by the others after this long.",
    )
    max_age_s: float = Field(
        86_400.0, gt=0, description="A notice not delivered this long after it was planned is dead-lettered."
    )
    per_host_concurrency: int = Field(
        20, ge=1, description="Deliveries in flight at once to one webhook host (or to the SMTP server)."
    )
    workers: int = Field(
        1, ge=1, le=64, description="Webhook sending processes (one per core): they do the webhook POSTs, the notifier "
        "process claims, decides and records; 1 = webhooks are sent in the notifier process itself.",
    )
    webhook_ca_file: str | None = Field(
        None, description="Extra CA certificates (PEM) trusted for https webhooks, besides the system ones."
    )
    servicedesk_language: Language = Field(Language.FR, description="Language of the Servicedesk's e-mails.")
    bureau_language: Language = Field(Language.FR, description="Language of the Bureau de recette's e-mails.")
    servicedesk_contact: str | None = Field(
        None, description="How EOs reach the Servicedesk eDouane, as printed in notices (e.g. phone and e-mail)."
    )
    bureau_contact: str | None = Field(
        None, description="How EOs reach the Bureau de recette Douanes, as printed in scenario-3 notices."
    )
    registry_catchup_s: float = Field(
        60.0, ge=0, description="At startup, how long to wait for the EO registry topic to be read before fanning out."
    )
    escalate_after_s: float = Field(
        60.0, ge=0,
        description="An EO webhook notice not delivered this long after it was planned also goes by e-mail (once; "
        "0 = at once); as long again after that, the Servicedesk gets a digest of the EOs still unreached.",
    )


class SmtpSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(25, ge=0, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    starttls: bool = False
    use_tls: bool = Field(False, description="Implicit TLS from the first byte (SMTPS, usually port 465).")
    from_address: str = "luccs-fallback@localhost"
    timeout_s: float = Field(10.0, gt=0, description="Time allowed for connecting and for each SMTP command.")
    ca_file: str | None = Field(None, description="Extra CA certificates (PEM) trusted for the SMTP server.")
    connections: int = Field(4, ge=1, description="SMTP connections the notifier keeps open and uses in parallel.")

    @model_validator(mode="after")
    def _one_tls_mode(self) -> SmtpSettings:
        if self.starttls and self.use_tls:
            raise ValueError("smtp.starttls and smtp.use_tls exclude each other: pick one")
        return self


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class LoggingSettings(_Section):
    level: LogLevel = Field("INFO", description="Least severe level logged (any case).")
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="json: a JSON object per line; console: a readable line; auto: console on a terminal."
    )

    @field_validator("level", mode="before")
    @classmethod
    def _any_case(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


_log = logging.getLogger(__name__)
_MOVED_KEYS = {"log_level": "[logging] level (environment LUCCS_LOGGING__LEVEL)"}


class Settings(BaseSettings):
    """The whole configuration of a luccs-fallback installation."""

    model_config = SettingsConfigDict(env_prefix="LUCCS_", env_nested_delimiter="__", extra="forbid")

    data_dir: Path = Field(Path("var"), description="Where default SQLite files live.")
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    detector: DetectorSettings = Field(default_factory=DetectorSettings)
    procedure: ProcedureSettings = Field(default_factory=ProcedureSettings)
    notifier: NotifierSettings = Field(default_factory=NotifierSettings)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's content arrives as init arguments; the environment overrides it.
        return env_settings, init_settings

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, values: Any) -> Any:
        """``log_level`` (earlier versions) still works, as ``[logging] level``, with a warning."""
        if isinstance(values, dict) and "log_level" in values:
            values = dict(values)
            level = values.pop("log_level")
            section = dict(values.get("logging") or {})
            if "level" in section and str(section["level"]).upper() != str(level).upper():
                raise ValueError(f"log_level = {level!r} and [logging] level = {section['level']!r} disagree: "
                                 "keep [logging] level only")
            section.setdefault("level", level)
            values["logging"] = section
            _log.warning("configuration: log_level is deprecated, it is now %s", _MOVED_KEYS["log_level"])
        return values

    @model_validator(mode="after")
    def _notifier_ca_loads(self) -> Settings:
        if self.procedure.notifier_ca_file is not None:
            self.notifier_ssl_context()  # a CA bundle that does not load is a configuration error, said at start
        return self

    def notifier_ssl_context(self) -> ssl.SSLContext:
        """The TLS context with which the procedure service reads an https ``procedure.notifier_url``: the
        notifier must chain to ``procedure.notifier_ca_file`` (else the system's CAs); this configuration's
        ``[api]`` certificate is presented if the notifier requires client certificates."""
        return self.api.client_ssl_context(ca_file=self.procedure.notifier_ca_file,
                                           ca_setting="procedure.notifier_ca_file")

    def database_url(self, service: Literal["detector", "procedure", "notifier"]) -> str:
        """The SQLAlchemy URL of a service's database: the configured one, or a SQLite file in data_dir."""
        configured: str | None = getattr(self, service).database_url
        if configured:
            return configured
        return f"sqlite+aiosqlite:///{self.data_dir / f'{service}.db'}"


class ConfigError(Exception):
    """The configuration cannot be loaded; the message says which file and which key."""


def load_settings(config_path: str | Path | None = None) -> Settings:
    """Load the TOML file (``config_path``, else ``$LUCCS_CONFIG``, else none) and apply env overrides."""
    path = config_path or os.environ.get(CONFIG_ENV)
    file_values: dict[str, Any] = {}
    if path:
        try:
            file_values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"configuration file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    legacy_level = os.environ.get("LUCCS_LOG_LEVEL")
    if legacy_level is not None and "LUCCS_LOGGING__LEVEL" not in os.environ:
        _log.warning("environment: LUCCS_LOG_LEVEL is deprecated, it is now %s", _MOVED_KEYS["log_level"])
        file_values.pop("log_level", None)
        file_values["logging"] = {**dict(file_values.get("logging") or {}), "level": legacy_level}
    try:
        return Settings(**file_values)
    except SettingsError as exc:
        raise ConfigError(f"environment: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'configuration'}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()[:10]
        )
        raise ConfigError(f"{path or 'configuration'}: {problems}") from exc
