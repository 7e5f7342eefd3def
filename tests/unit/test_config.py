"""Unit tests of configuration loading (shared/config.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import pytest
from sqlalchemy.engine import make_url

from shared.config import CONFIG_ENV, ConfigError, KafkaSettings, Settings, load_settings
from shared.events import Component


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No LUCCS_* variable of the calling shell (or of the test runner) leaks into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("LUCCS_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "luccs.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_file() -> None:
    settings = load_settings()
    assert settings.data_dir == Path("var")
    assert (settings.logging.level, settings.logging.format) == ("INFO", "auto")
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert settings.kafka.topic_prefix == "luccs"
    assert settings.kafka.partitions == 3
    assert settings.api.host == "127.0.0.1"
    assert settings.api.operator_tokens == []
    assert settings.detector.interval_s == 5.0
    assert settings.detector.timeout_s == 2.0
    assert settings.detector.failure_threshold == 3
    assert settings.detector.success_threshold == 2
    assert settings.detector.retry_interval_s is None  # derived per target: its interval_s / 5
    assert settings.detector.targets == []
    assert settings.detector.instance_id
    assert settings.procedure.mode == "auto"
    assert settings.procedure.stale_after_s == 60.0
    assert settings.notifier.allow_insecure_webhooks is False
    assert settings.notifier.allow_private_webhooks is False
    assert settings.notifier.max_attempts == 6
    assert (settings.detector.port, settings.procedure.port, settings.notifier.port) == (8001, 8002, 8003)


def test_an_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "")) == load_settings()


def test_file_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
data_dir = "/srv/luccs"

[logging]
level = "debug"
format = "console"

[kafka]
bootstrap_servers = "broker-1:9093,broker-2:9093"
topic_prefix = "acc"

[detector]
instance_id = "vp-east"
interval_s = 2.5
failure_threshold = 4

[[detector.targets]]
id = "ada-as4-1"
component = "ada_b2g"
probe = "as4"
url = "https://as4-1.luccs.example/msh"

[[detector.targets]]
id = "ntp-1"
component = "ntp"
url = "https://ntp.luccs.example/health"
failure_threshold = 5

[procedure]
mode = "confirm"
stale_after_s = 45

[notifier]
allow_insecure_webhooks = true
max_attempts = 9
""",
    )
    settings = load_settings(path)
    assert (settings.logging.level, settings.logging.format) == ("DEBUG", "console")
    assert settings.data_dir == Path("/srv/luccs")
    assert settings.kafka.bootstrap_servers == "broker-1:9093,broker-2:9093"
    assert settings.kafka.availability_topic == "acc.availability.v1"
    assert settings.detector.instance_id == "vp-east"
    assert settings.detector.interval_s == 2.5
    assert settings.detector.failure_threshold == 4
    assert settings.detector.success_threshold == 2  # not in the file: default
    assert [t.id for t in settings.detector.targets] == ["ada-as4-1", "ntp-1"]
    assert settings.detector.targets[0].component == Component.ADA_B2G
    assert settings.detector.targets[0].probe == "as4"
    assert settings.detector.targets[1].probe == "http"
    assert settings.detector.targets[1].failure_threshold == 5
    assert settings.detector.targets[0].failure_threshold is None
    assert settings.procedure.mode == "confirm"
    assert settings.procedure.stale_after_s == 45.0
    assert settings.notifier.allow_insecure_webhooks is True
    assert settings.notifier.max_attempts == 9


def test_config_file_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(write(tmp_path, "[detector]\ninterval_s = 7.5\n")))
    assert load_settings().detector.interval_s == 7.5


def test_an_explicit_path_wins_over_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(write(tmp_path, "[detector]\ninterval_s = 7.5\n", "env.toml")))
    explicit = write(tmp_path, "[detector]\ninterval_s = 1.5\n", "explicit.toml")
    assert load_settings(explicit).detector.interval_s == 1.5


def test_env_overrides_merge_with_file_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[detector]\ninterval_s = 9.0\nsuccess_threshold = 4\n")
    monkeypatch.setenv("LUCCS_DETECTOR__FAILURE_THRESHOLD", "7")
    settings = load_settings(path)
    assert settings.detector.interval_s == 9.0  # from the file
    assert settings.detector.success_threshold == 4  # from the file
    assert settings.detector.failure_threshold == 7  # from the environment


def test_env_wins_over_the_file_for_the_same_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[logging]\nlevel = "DEBUG"\nformat = "console"\n[procedure]\nmode = "confirm"\n')
    monkeypatch.setenv("LUCCS_PROCEDURE__MODE", "auto")
    monkeypatch.setenv("LUCCS_LOGGING__LEVEL", "WARNING")
    monkeypatch.setenv("LUCCS_LOGGING__FORMAT", "json")
    settings = load_settings(path)
    assert settings.procedure.mode == "auto"
    assert (settings.logging.level, settings.logging.format) == ("WARNING", "json")


def test_env_overrides_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUCCS_KAFKA__BOOTSTRAP_SERVERS", "10.0.0.5:9092")
    monkeypatch.setenv("LUCCS_NOTIFIER__ALLOW_PRIVATE_WEBHOOKS", "true")
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "10.0.0.5:9092"
    assert settings.notifier.allow_private_webhooks is True


def test_unrelated_luccs_variables_are_not_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test runner itself exports LUCCS_TEST_KAFKA / LUCCS_TEST_POSTGRES_URL.
    monkeypatch.setenv("LUCCS_TEST_KAFKA", "127.0.0.1:9092")
    assert load_settings().kafka.bootstrap_servers == "127.0.0.1:9092"


def test_env_bad_value_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUCCS_DETECTOR__INTERVAL_S", "soon")
    with pytest.raises(ConfigError, match=r"detector\.interval_s"):
        load_settings()


def test_malformed_section_env_value_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUCCS_KAFKA", "notjson")
    with pytest.raises(ConfigError):
        load_settings()


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="not found") as info:
        load_settings(missing)
    assert str(missing) in str(info.value)


def test_missing_file_named_by_the_environment_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="not found"):
        load_settings()


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('data_dir = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError):
        load_settings(path)


@pytest.mark.parametrize("text", ["[detector\ninterval_s = 1", "interval_s = = 3", 'a = "unterminated'])
def test_invalid_toml_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="invalid TOML") as info:
        load_settings(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("colour = 'blue'\n", "colour"),
        ("[detector]\nintervall_s = 5\n", "detector.intervall_s"),
        ("[kafka]\nbootstrap = 'x:1'\n", "kafka.bootstrap"),
        ("[telemetry]\nenabled = true\n", "telemetry"),
        (
            "[[detector.targets]]\nid = 'a'\ncomponent = 'ntp'\nurl = 'https://x'\nretries = 2\n",
            "detector.targets.0.retries",
        ),
    ],
)
def test_unknown_keys_are_config_errors(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert key in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[detector]\ninterval_s = -1\n", "detector.interval_s"),
        ("[detector]\ninterval_s = 0\n", "detector.interval_s"),
        ("[detector]\nfailure_threshold = 0\n", "detector.failure_threshold"),
        ("[detector]\nport = 70000\n", "detector.port"),
        ("[procedure]\nmode = 'manual'\n", "procedure.mode"),
        ("[procedure]\nstale_after_s = -5\n", "procedure.stale_after_s"),
        ("[notifier]\nmax_attempts = 0\n", "notifier.max_attempts"),
        ("[kafka]\ntopic_prefix = 'bad prefix!'\n", "kafka.topic_prefix"),
        ("[logging]\nlevel = 'loud'\n", "logging.level"),
        ("[logging]\nformat = 'xml'\n", "logging.format"),
        (
            "[[detector.targets]]\nid = 'a'\ncomponent = 'mainframe'\nurl = 'https://x'\n",
            "detector.targets.0.component",
        ),
        ("[[detector.targets]]\nid = 'a'\ncomponent = 'ntp'\n", "detector.targets.0.url"),
        ("[[detector.targets]]\nid = 'has space'\ncomponent = 'ntp'\nurl = 'https://x'\n", "detector.targets.0.id"),
    ],
)
def test_bad_values_are_config_errors(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    assert key in str(info.value)


def test_the_old_log_level_key_still_works_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("LUCCS_LOGGING__LEVEL", raising=False)
    with caplog.at_level("WARNING", logger="shared.config"):
        assert load_settings(write(tmp_path, 'log_level = "debug"\n')).logging.level == "DEBUG"
    assert "log_level is deprecated, it is now [logging] level" in caplog.text
    with pytest.raises(ConfigError, match=r"log_level = 'DEBUG' and \[logging\] level = 'ERROR' disagree"):
        load_settings(write(tmp_path, 'log_level = "DEBUG"\n[logging]\nlevel = "ERROR"\n'))
    assert load_settings(write(tmp_path, 'log_level = "ERROR"\n[logging]\nlevel = "error"\n')).logging.level == "ERROR"
    caplog.clear()
    monkeypatch.setenv("LUCCS_LOG_LEVEL", "WARNING")
    with caplog.at_level("WARNING", logger="shared.config"):
        assert load_settings().logging.level == "WARNING"
    assert "LUCCS_LOG_LEVEL is deprecated" in caplog.text
    monkeypatch.setenv("LUCCS_LOGGING__LEVEL", "ERROR")  # the new name wins
    assert load_settings().logging.level == "ERROR"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[detector]\nretry_interval_s = 0\n", "detector.retry_interval_s: Input should be greater than 0"),
        ("[detector]\nretry_interval_s = -1\n", "detector.retry_interval_s: Input should be greater than 0"),
        ("[detector]\ninterval_s = 5\nretry_interval_s = 6\n",
         "detector.retry_interval_s (6) must not exceed detector.interval_s (5)"),
        ("[[detector.targets]]\nid = 'a'\ncomponent = 'ntp'\nurl = 'https://x'\nretry_interval_s = 0\n",
         "detector.targets.0.retry_interval_s: Input should be greater than 0"),
        ("[[detector.targets]]\nid = 'a'\ncomponent = 'ntp'\nurl = 'https://x'\ninterval_s = 2\n"
         "retry_interval_s = 3\n", "detector target 'a': retry_interval_s (3) must not exceed its interval_s (2)"),
        ("[detector]\nretry_interval_s = 1\n[[detector.targets]]\nid = 'a'\ncomponent = 'ntp'\n"
         "url = 'https://x'\ninterval_s = 0.5\n",
         "detector target 'a': retry_interval_s (1) (from [detector]) must not exceed its interval_s (0.5)"),
    ],
)
def test_a_retry_pace_must_be_positive_and_within_the_interval(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    assert message in str(info.value)
    assert "\n" not in str(info.value), "one line"


def test_a_retry_pace_within_every_interval_loads(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, """
[detector]
interval_s = 5
retry_interval_s = 5

[[detector.targets]]
id = "slow"
component = "ntp"
url = "https://x"
interval_s = 60

[[detector.targets]]
id = "fast"
component = "ntp"
url = "https://y"
interval_s = 0.5
retry_interval_s = 0.1
"""))
    assert settings.detector.retry_interval_s == 5
    assert [t.retry_interval_s for t in settings.detector.targets] == [None, 0.1]


def test_duplicate_target_ids_are_a_config_error(tmp_path: Path) -> None:
    text = """
[[detector.targets]]
id = "ada-1"
component = "ada_b2g"
url = "https://a.example"

[[detector.targets]]
id = "ntp-1"
component = "ntp"
url = "https://n.example"

[[detector.targets]]
id = "ada-1"
component = "ada_b2g"
url = "https://b.example"
"""
    with pytest.raises(ConfigError, match="duplicate") as info:
        load_settings(write(tmp_path, text))
    assert "ada-1" in str(info.value)
    assert "ntp-1" not in str(info.value)


def test_config_error_chains_its_cause(tmp_path: Path) -> None:
    # The CLI prints the message and exits 2; it must be a ConfigError, chained to the cause.
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, "[detector]\ninterval_s = -1\n"))
    assert info.value.__cause__ is not None


# --- topics and database URLs -----------------------------------------------------------------


def test_topic_names() -> None:
    kafka = KafkaSettings()
    assert kafka.topic("availability") == "luccs.availability.v1"
    assert kafka.availability_topic == "luccs.availability.v1"
    assert kafka.procedures_topic == "luccs.procedures.v1"
    assert kafka.eos_topic == "luccs.eos.v1"
    assert kafka.deliveries_topic == "luccs.deliveries.v1"
    assert kafka.deadletter_topic == "luccs.deadletter.v1"


def test_topic_names_follow_the_prefix() -> None:
    kafka = KafkaSettings(topic_prefix="test-abc123")
    assert kafka.procedures_topic == "test-abc123.procedures.v1"
    assert kafka.topic("custom") == "test-abc123.custom.v1"


@pytest.mark.parametrize("service", ["detector", "procedure", "notifier"])
def test_default_database_is_a_sqlite_file_per_service_under_data_dir(
    service: Literal["detector", "procedure", "notifier"], tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path)
    url = make_url(settings.database_url(service))
    assert url.drivername == "sqlite+aiosqlite"
    assert url.database == str(tmp_path / f"{service}.db")


def test_default_database_with_the_default_data_dir_is_relative_to_var() -> None:
    url = make_url(load_settings().database_url("procedure"))
    assert url.drivername == "sqlite+aiosqlite"
    assert Path(url.database or "") == Path("var") / "procedure.db"


def test_configured_database_url_is_used_as_is(tmp_path: Path) -> None:
    path = write(tmp_path, '[notifier]\ndatabase_url = "postgresql://luccs@db.example/notifier"\n')
    settings = load_settings(path)
    assert settings.database_url("notifier") == "postgresql://luccs@db.example/notifier"
    assert make_url(settings.database_url("detector")).drivername == "sqlite+aiosqlite"


def test_operator_tokens_are_secret(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, '[api]\noperator_tokens = ["tok-very-secret"]\n'))
    assert [t.get_secret_value() for t in settings.api.operator_tokens] == ["tok-very-secret"]
    assert "tok-very-secret" not in repr(settings)


def test_min_insync_replicas_may_not_exceed_the_replication_factor(tmp_path: Path) -> None:
    config = tmp_path / "luccs.toml"
    config.write_text("[kafka]\nreplication_factor = 2\nmin_insync_replicas = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"kafka.min_insync_replicas \(3\) must not exceed kafka.replication_factor"):
        load_settings(config)


def test_procedure_instance_ids_differ_between_processes_and_stay_put_within_one() -> None:
    from shared.config import _instance_id_of

    here = Settings().procedure.instance_id
    assert Settings().procedure.instance_id == here
    assert here == _instance_id_of(os.getpid())
    assert _instance_id_of(os.getpid() + 1) != here  # another process on this host
