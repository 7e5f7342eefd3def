"""How every Kafka client of the services connects: the aiokafka options built from ``[kafka]`` (TLS,
SASL), and a start that says why a broker refuses us. Public through :mod:`shared.kafka`.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Protocol

from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)

from shared.config import KafkaSettings


def connection_options(settings: KafkaSettings) -> dict[str, Any]:
    """The keyword arguments that connect an aiokafka client (producer, consumer or admin) as configured:
    the bootstrap servers, the security protocol, the TLS context and the SASL login.

    Every Kafka client of the services is built with them, so that ``[kafka]`` alone decides how all of
    them reach the broker.
    """
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.security_protocol,
    }
    context = settings.ssl_context()
    if context is not None:
        options["ssl_context"] = context
    if settings.uses_sasl:
        if not (settings.sasl_mechanism and settings.sasl_username and settings.sasl_password):
            raise ValueError(f"kafka.security_protocol {settings.security_protocol} needs kafka.sasl_mechanism, "
                             "kafka.sasl_username and a non-empty kafka.sasl_password")  # the settings check it too
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return options


class KafkaAccessDenied(ConnectionError):
    """The broker refuses this client for a reason that retrying will not fix: its TLS certificate is not
    trusted, it rejects ours, or the SASL login failed. The message says which ``[kafka]`` keys to check."""


class _Startable(Protocol):
    async def start(self) -> None: ...


async def start_client(client: _Startable, settings: KafkaSettings) -> None:
    """Start an aiokafka client; if it cannot reach the broker, say why.

    aiokafka only raises "Unable to bootstrap" and logs the reason. Here one direct connection finds it:
    a TLS or SASL refusal raises :class:`KafkaAccessDenied` at once (no point retrying a wrong password),
    anything else a :class:`KafkaConnectionError` (retriable, as before) that carries the reason.
    """
    starting = asyncio.ensure_future(client.start())
    try:
        await asyncio.shield(starting)
    except asyncio.CancelledError:
        try:
            await _let_finish(starting)
        except asyncio.CancelledError:  # cancelled again while waiting: give up on it, as before
            starting.cancel()
            raise
        raise
    except KafkaConnectionError as exc:
        cause = await connection_failure(settings)
        if cause is None:
            raise
        denied = access_denied(settings, cause)
        if denied is not None:
            raise denied from exc
        raise KafkaConnectionError(f"no connection to {settings.bootstrap_servers}: {_describe(cause)}") from exc


START_SETTLE_S = 10.0
"""How long a cancelled start may go on to its end, so that its connections can be closed."""


async def _let_finish(starting: asyncio.Future[None]) -> None:
    """Wait (bounded) for a start that its caller's cancel interrupted.

    aiokafka's bootstrap holds its first connection in a local variable until the broker's metadata comes
    back: a start cancelled then leaves that connection open, and the garbage collector finds it later
    (a ResourceWarning; found by clean-clone test runs on a loaded machine, where a service stopped while
    its consumer was still starting). Let the start end by itself, so that the caller's ``stop()`` or
    ``close()`` closes every connection it made; a start stuck past ``START_SETTLE_S`` is cancelled after all.
    """
    done, _ = await asyncio.wait({starting}, timeout=START_SETTLE_S)
    if not done:
        starting.cancel()
        await asyncio.wait({starting})
    if not starting.cancelled():
        starting.exception()  # retrieved: a failed start is the cancelled caller's concern no more


def _describe(exc: BaseException) -> str:
    """An exception as one line: aiokafka's errors name their class already, others get it prefixed."""
    return str(exc) if isinstance(exc, KafkaError) else f"{type(exc).__name__}: {exc}".rstrip(": ")


async def connection_failure(settings: KafkaSettings, *, timeout_s: float = 5.0) -> BaseException | None:
    """Why a client cannot connect: one direct connection (TLS handshake and SASL login included) to each
    bootstrap server in turn; the last failure, or None as soon as one server accepts."""
    options = connection_options(settings)
    del options["bootstrap_servers"]
    failure: BaseException | None = None
    for host, port, _family in collect_hosts(settings.bootstrap_servers, randomize=False):
        try:
            async with asyncio.timeout(timeout_s):
                connection = await create_conn(host, port, request_timeout_ms=int(timeout_s * 1000), **options)
        except (OSError, KafkaError, TimeoutError) as exc:
            failure = exc
            continue
        connection.close()
        return None
    return failure


def access_denied(settings: KafkaSettings, cause: BaseException) -> KafkaAccessDenied | None:
    """The refusal that ``cause`` (from :func:`connection_failure`) means, or None if it may be transient."""
    where = f"Kafka at {settings.bootstrap_servers}"
    if isinstance(cause, SaslAuthenticationFailed | AuthenticationFailedError):
        return KafkaAccessDenied(
            f"{where} refused the SASL {settings.sasl_mechanism} login of {settings.sasl_username!r}: {cause}; "
            "check kafka.sasl_username, kafka.sasl_password and kafka.sasl_mechanism"
        )
    if isinstance(cause, UnsupportedSaslMechanismError):
        return KafkaAccessDenied(f"{where}: {cause}; check kafka.sasl_mechanism")
    if isinstance(cause, IllegalSaslStateError):
        return KafkaAccessDenied(
            f"{where} does not expect a SASL login on that port; check kafka.security_protocol against the "
            "broker's listener (PLAINTEXT or SSL?)"
        )
    if isinstance(cause, ssl.SSLCertVerificationError):
        return KafkaAccessDenied(
            f"{where}: the broker's TLS certificate is not trusted ({cause.verify_message}); check kafka.ssl_cafile"
            + (" and kafka.ssl_check_hostname" if settings.ssl_check_hostname else "")
        )
    if isinstance(cause, ssl.SSLError) and "ALERT" in (cause.reason or ""):
        return KafkaAccessDenied(
            f"{where} refused the TLS handshake ({cause.reason}); check kafka.ssl_certfile and kafka.ssl_keyfile"
        )
    return None
