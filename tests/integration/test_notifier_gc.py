"""The notifier alone in its process tunes the garbage collector (``shared.gc_settle``); beside others it does not."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from services.notifier.app import create_app
from shared.config import KafkaSettings, Settings

pytestmark = pytest.mark.integration


def _settings(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str) -> Settings:
    return Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix),
        notifier={"instance_id": "it-gc"},
    )


@pytest.mark.timeout(120)
async def test_a_notifier_alone_freezes_what_its_start_built_and_gives_the_collector_back_at_the_end(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    before = gc.get_threshold()
    app = create_app(_settings(tmp_path, kafka_bootstrap, topic_prefix), own_process=True)
    try:
        async with app.router.lifespan_context(app):
            assert gc.get_threshold() == (50_000, 20, 10)
            assert gc.get_freeze_count() > 0  # what the start built, frozen before any work
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


@pytest.mark.timeout(120)
async def test_a_notifier_beside_other_services_leaves_the_collector_alone(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    before = gc.get_threshold()
    app = create_app(_settings(tmp_path, kafka_bootstrap, topic_prefix))
    async with app.router.lifespan_context(app):
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0
