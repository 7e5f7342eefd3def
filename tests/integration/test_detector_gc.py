"""The detector alone in its process tunes the garbage collector for its targets; beside others it does not."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from services.detector.app import create_app
from shared.config import KafkaSettings, Settings
from shared.kafka import ensure_topics
from tests.support import eventually

pytestmark = pytest.mark.integration


def _settings(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str) -> Settings:
    return Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix),
        detector={
            "instance_id": "it-gc", "interval_s": 60.0, "heartbeat_s": 600.0, "eo_targets": False,
            "targets": [{"id": "ntp-a", "component": "ntp", "probe": "tcp", "url": "127.0.0.1:9"}],
        },
    )


@pytest.mark.timeout(120)
async def test_a_detector_alone_freezes_its_targets_and_gives_the_collector_back_at_the_end(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, kafka_bootstrap, topic_prefix)
    await ensure_topics(settings.kafka)
    before = gc.get_threshold()
    app = create_app(settings, own_process=True)
    try:
        async with app.router.lifespan_context(app):
            assert gc.get_threshold() == (50_000, 20, 10)
            await eventually(lambda: gc.get_freeze_count() > 0, what="the targets frozen once their puts are quiet")
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert gc.get_freeze_count() == 0


@pytest.mark.timeout(120)
async def test_a_detector_beside_other_services_leaves_the_collector_alone(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, kafka_bootstrap, topic_prefix)
    await ensure_topics(settings.kafka)
    before = gc.get_threshold()
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0
