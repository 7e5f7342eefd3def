"""Detector bootstrap: checks the targets, then (in the lifespan) its database, the broker clients and the loops.

At start the database (``detector.database_url``, default a SQLite file in ``data_dir``) is migrated and
this instance's saved targets are loaded: configured and registered targets resume from them (see
``Detector.put``), the others are dropped. Loops: the scheduler (probes), the latest-state buffer (publishes changes at
once and the latest state per target when the broker comes back), the heartbeat, the write-behind of
target states (which also deletes other instances' rows not saved for ``detector.state_retention_days``),
the EO registry follower (adds, changes and removes ``eo:<EORI>`` targets while running) and, with
``detector.vantage_points``, the follower of the other instances' heartbeats (which EO endpoints are probed
here). With ``detector.workers`` > 1 the scheduler loop is the pool of probe worker processes.
At shutdown what changed since the last save is saved.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

from fastapi import Depends, FastAPI
from prometheus_client import CollectorRegistry

from services.detector.api import router
from services.detector.domain import TargetStatus
from services.detector.metrics import DetectorMetrics
from services.detector.migrate import upgrade
from services.detector.peers import PeerWatch
from services.detector.probes import CredentialsError, Prober
from services.detector.registry import RegistryFollower
from services.detector.service import Detector
from services.detector.store import TargetStore, WriteBehind
from services.detector.targets import InvalidTarget, Target, TlsFiles, eo_signing, from_settings
from services.detector.vantage import Membership
from shared.auth import authorize, build_guard, install_guard
from shared.config import ConfigError, Settings
from shared.db import make_engine, session_factory
from shared.events import AvailabilityData, CloudEvent
from shared.gc_settle import GcSettler
from shared.http import add_ops_routes
from shared.kafka import Publisher, ensure_topics
from shared.tasks import BackgroundTasks

log = logging.getLogger(__name__)


def configured_targets(settings: Settings, prober: Prober) -> list[Target]:
    """Resolve the configured targets and load their TLS files; raise ConfigError on the first problem."""
    detector = settings.detector
    if any(days < 1 for days in detector.cert_warning_days):
        raise ConfigError("detector.cert_warning_days: every level must be at least 1 day")
    targets: list[Target] = []
    for index, configured in enumerate(detector.targets):
        try:
            target = from_settings(configured, detector)
            prober.check(target)
        except CredentialsError as exc:
            raise ConfigError(f"detector.targets[{index}] ({configured.id}): AS4 signing: {exc}") from exc
        except InvalidTarget as exc:
            raise ConfigError(f"detector.targets[{index}]: {exc}") from exc
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"detector.targets[{index}] ({configured.id}): TLS files: {exc}") from exc
        targets.append(target)
    if detector.vantage_points and detector.eo_targets and not targets:
        raise ConfigError("detector.vantage_points needs at least one configured target: the instances see each "
                          "other through the heartbeats of the targets they all probe")
    if detector.eo_targets and (detector.ca_file or detector.client_cert_file):
        try:
            prober.contexts.get(TlsFiles(detector.ca_file, detector.client_cert_file, detector.client_key_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"detector: TLS files: {exc}") from exc
    eo_signed = eo_signing(detector)
    if detector.eo_targets and eo_signed is not None:
        try:
            prober.credentials.get(eo_signed)
        except CredentialsError as exc:
            raise ConfigError(f"detector: AS4 signing of EO pings: {exc}") from exc
    return targets


def create_app(settings: Settings, *, own_process: bool = False) -> FastAPI:
    """The detector's FastAPI app; raises ConfigError at once if a target cannot be probed as configured.

    ``own_process``: the detector is alone in its process (``luccs-fallback detector``), so it may tune the
    process's garbage collector for its targets (:mod:`shared.gc_settle`); beside other services
    (``luccs-fallback all``) or in a test's process it leaves the collector as it is."""
    prober = Prober()
    targets = configured_targets(settings, prober)
    registry = CollectorRegistry()
    state: dict[str, Any] = {}

    def statuses() -> Iterator[tuple[Target, TargetStatus]]:
        detector: Detector | None = state.get("detector")
        return detector.view() if detector is not None else iter(())

    metrics = DetectorMetrics.create(registry, statuses=statuses)
    instance = settings.detector.instance_id
    kafka = settings.kafka

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            engine = make_engine(settings.database_url("detector"))
            stack.push_async_callback(engine.dispose)
            await upgrade(engine)
            store = TargetStore(
                session_factory(engine), instance_id=instance,
                retention=timedelta(days=settings.detector.state_retention_days),
            )
            saved = await store.load()
            await ensure_topics(kafka)
            # Expiring, not idempotent: a state the broker did not take in time is stale (see Publisher).
            publisher = Publisher(
                kafka, client_id=f"detector-{instance}", expire_after_s=settings.detector.publish_timeout_s
            )
            await publisher.start()
            stack.push_async_callback(publisher.stop)

            async def send(target_id: str, event: CloudEvent[AvailabilityData]) -> None:
                await publisher.publish(kafka.availability_topic, event, key=target_id)

            settler = None
            if own_process:  # a freeze would also hold the cycles of other services' objects until the next one
                settler = GcSettler().install()  # the collector's cost kept off the targets (gc_settle.py)
                stack.callback(settler.close)
            detector = Detector(settings=settings.detector, prober=prober, send=send, metrics=metrics,
                                logging_settings=settings.logging, settler=settler)
            detector.resume_from(saved)
            for target in targets:
                detector.put(target)
            detector.forget_unclaimed(registry=False)
            if not settings.detector.eo_targets:
                detector.forget_unclaimed(registry=True)
            write_behind = WriteBehind(
                detector=detector, store=store, on_save=metrics.save_seconds.observe,
                on_failure=lambda _exc: metrics.save_failures.inc(),
            )
            tasks = BackgroundTasks()
            state.update(detector=detector, tasks=tasks, write_behind=write_behind)
            app.state.detector = detector
            tasks.start(detector.scheduler.run(), name="scheduler")
            tasks.start(detector.latest.run(), name="publish")
            tasks.start(detector.heartbeat_loop(), name="heartbeat")
            tasks.start(write_behind.run(), name="save")
            if settings.detector.eo_targets:
                follower = RegistryFollower(
                    kafka=kafka,
                    name=f"{kafka.topic_prefix}.detector.{instance}.eos",
                    on_upsert=detector.on_eo,
                    on_remove=detector.on_eo_removed,
                    on_replayed=detector.retain_eos,
                    sink=publisher,
                    on_outcome=lambda outcome: metrics.registry_records.labels(outcome).inc(),
                )
                state["follower"] = follower
                tasks.start(follower.run(), name="eo-registry")
                if settings.detector.vantage_points:
                    peers = PeerWatch(
                        kafka=kafka,
                        membership=Membership(self_id=instance, timeout_s=settings.detector.vantage_timeout_s),
                        on_members=detector.set_vantage_members,
                    )
                    tasks.start(peers.run(), name="vantage-points")
            try:
                yield
            finally:
                await tasks.stop()
                if not await write_behind.flush():
                    log.error("target states changed since the last save are lost: %s", write_behind.last_error)

    app = FastAPI(title="luccs-fallback detector", version="1", lifespan=lifespan, dependencies=[Depends(authorize)])
    app.include_router(router)

    async def broker_ready() -> str | None:
        detector: Detector | None = state.get("detector")
        return "starting" if detector is None else detector.latest.last_error

    async def registry_ready() -> str | None:
        follower: RegistryFollower | None = state.get("follower")
        if follower is None or follower.caught_up:
            return None if "detector" in state else "starting"
        return follower.last_error or "replaying the EO registry"

    async def database_ready() -> str | None:
        write_behind: WriteBehind | None = state.get("write_behind")
        return "starting" if write_behind is None else write_behind.last_error

    async def loops_alive() -> str | None:
        tasks: BackgroundTasks | None = state.get("tasks")
        return "starting" if tasks is None else await tasks.problem()

    async def no_loop_died() -> str | None:
        tasks: BackgroundTasks | None = state.get("tasks")
        return None if tasks is None else await tasks.problem()

    add_ops_routes(
        app,
        checks={"kafka": broker_ready, "database": database_ready, "eo_registry": registry_ready,
                "loops": loops_alive},
        registry=registry,
        liveness=no_loop_died,
    )
    async def eo_of_key(api_key: str) -> str | None:
        detector: Detector | None = getattr(app.state, "detector", None)
        return detector.eori_of_key(api_key) if detector is not None else None

    # EO keys as the registry topic publishes them (hashed): an EO reads its own AS4 endpoint's target.
    install_guard(app, build_guard(service="detector", api=settings.api, eo_keys=eo_of_key),
                  max_body_bytes=settings.api.max_body_bytes)
    return app
