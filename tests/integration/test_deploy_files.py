"""The deployment files under deploy/ (image, Compose, Kubernetes), checked against the code.

Nothing here runs Docker or needs a network: the files are parsed and compared with what the code
accepts — the CLI's subcommands, the settings model (every ``LUCCS_*`` name, every TOML file), the
services' default ports and the ops routes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import ssl
import subprocess
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, get_args

import pytest
import trustme
import yaml
from cryptography import x509
from pydantic import BaseModel, SecretStr
from sqlalchemy.engine import make_url

from services.cli import main as cli_main
from shared.config import Settings, load_settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CONTAINER = DEPLOY / "container"
COMPOSE_DIR = DEPLOY / "compose"
KUBERNETES = DEPLOY / "kubernetes"
DOCKERFILE = CONTAINER / "Dockerfile"
IMAGE_CONFIG = "/etc/luccs/luccs.toml"
SERVICE_NAMES = ("detector", "procedure", "notifier")
NAMESPACE = "luccs-fallback"
COMPOSE_SECRETS = "/run/secrets/"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No LUCCS_* variable of the calling shell leaks into the settings these tests load."""
    for name in list(os.environ):
        if name.upper().startswith("LUCCS_"):
            monkeypatch.delenv(name)


# --- helpers ------------------------------------------------------------------------------------------


def as_dict(value: object) -> dict[str, Any]:
    assert isinstance(value, dict), f"expected a mapping, got {value!r}"
    return value


def as_list(value: object) -> list[Any]:
    assert isinstance(value, list), f"expected a list, got {value!r}"
    return value


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"deploy_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def setting_path(env_name: str) -> tuple[str, ...] | None:
    """The settings field an environment variable overrides (``LUCCS_A__B`` -> ``("a", "b")``), or None."""
    if not env_name.startswith("LUCCS_"):
        return None
    parts = tuple(part.lower() for part in env_name.removeprefix("LUCCS_").split("__"))
    model: type[BaseModel] = Settings
    for index, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None and index == len(parts) - 1 and part.endswith("_file"):
            # <secret>_FILE: the path of a file holding that secret setting (shared/config.py, _Section)
            secret = f"{'__'.join(parts[:-1]).upper()}__{part.removesuffix('_file').upper()}"
            return parts if f"LUCCS_{secret}" in secret_env_names() else None
        if field is None:
            return None
        if index == len(parts) - 1:
            return parts
        annotation = field.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return None


def _mentions_secret(annotation: object) -> bool:
    return annotation is SecretStr or any(_mentions_secret(arg) for arg in get_args(annotation))


def secret_env_names() -> set[str]:
    """``LUCCS_*`` names of every secret setting (SecretStr fields and the database URLs, which hold a
    password; at any depth of the sections): each may instead be given as ``<name>_FILE``."""
    names: set[str] = set()

    def walk(model: type[BaseModel], prefix: str) -> None:
        file_secrets: frozenset[str] = getattr(model, "_file_secrets", frozenset())  # e.g. database_url
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{prefix}{name.upper()}__")
            elif _mentions_secret(annotation) or name in file_secrets:
                names.add(f"{prefix}{name.upper()}")

    walk(Settings, "LUCCS_")
    return names


def cli_accepts(command: str, tmp_path: Path) -> bool:
    """Whether ``luccs-fallback <command> --config FILE`` gets past argument parsing (without running)."""
    try:
        code = cli_main([command, "--config", str(tmp_path / "no-such-config.toml")])
    except SystemExit:  # argparse refused the subcommand
        return False
    return code == 2  # it parsed the command, then stopped at the missing configuration file


def service_port(settings: Settings, service: str) -> int:
    port: int = getattr(settings, service).port
    return port


def load_with_env(config: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    with monkeypatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        return load_settings(config)


def with_files_at(text: str, mounts: dict[str, Path]) -> str:
    """``text`` with each mount point (a folder path inside the container) replaced by a local folder."""
    for mount, local in sorted(mounts.items(), key=lambda item: -len(item[0])):
        text = text.replace(mount.rstrip("/") + "/", f"{local}/")
    return text


def make_compose_secrets(folder: Path) -> Path:
    """The secret files as deploy/compose/make-secrets.sh makes them (run for real, with openssl)."""
    done = subprocess.run([str(COMPOSE_DIR / "make-secrets.sh"), str(folder)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return folder


@pytest.fixture(scope="module")
def compose_secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_compose_secrets(tmp_path_factory.mktemp("compose") / "secrets")


def compose_config(tmp_path: Path, compose_secrets: Path) -> Path:
    """deploy/compose/luccs.toml as a container sees it, its /run/secrets/ being ``compose_secrets``."""
    text = (COMPOSE_DIR / "luccs.toml").read_text(encoding="utf-8")
    path = tmp_path / "compose-luccs.toml"
    path.write_text(with_files_at(text, {COMPOSE_SECRETS: compose_secrets}), encoding="utf-8")
    return path


def test_setting_path_walks_the_real_model() -> None:
    assert setting_path("LUCCS_DETECTOR__INSTANCE_ID") == ("detector", "instance_id")
    assert setting_path("LUCCS_DATA_DIR") == ("data_dir",)
    assert setting_path("LUCCS_DETECTOR__INSTANCE") is None
    assert setting_path("LUCCS_PROCEDUR__PORT") is None  # the settings would silently ignore this one
    assert setting_path("LUCCS_DETECTOR__PORT__X") is None
    assert setting_path("KAFKA_NODE_ID") is None
    assert {"LUCCS_PROCEDURE__SEALING_KEY", "LUCCS_API__OPERATOR_TOKENS", "LUCCS_NOTIFIER__DATABASE_URL",
            "LUCCS_KAFKA__SASL_PASSWORD", "LUCCS_SMTP__PASSWORD"} <= secret_env_names()
    assert setting_path("LUCCS_PROCEDURE__SEALING_KEY_FILE") == ("procedure", "sealing_key_file")
    assert setting_path("LUCCS_PROCEDURE__DATABASE_URL_FILE") == ("procedure", "database_url_file")
    assert setting_path("LUCCS_PROCEDURE__PORT_FILE") is None  # not a secret: no _file form


def test_secret_files_are_read_with_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "url").write_text("postgresql://u:pw@db/x\n", encoding="utf-8")
    config = tmp_path / "luccs.toml"
    config.write_text("", encoding="utf-8")
    settings = load_with_env(config, {"LUCCS_PROCEDURE__DATABASE_URL_FILE": str(tmp_path / "url")}, monkeypatch)
    assert settings.procedure.database_url == "postgresql://u:pw@db/x"


def test_cli_accepts_is_strict(tmp_path: Path) -> None:
    assert cli_accepts("procedure", tmp_path)
    assert not cli_accepts("procedures", tmp_path)


# --- TOML files ---------------------------------------------------------------------------------------


def deploy_toml_files() -> list[Path]:
    return sorted(DEPLOY.rglob("*.toml"))


def test_every_toml_file_under_deploy_loads(tmp_path: Path, compose_secrets: Path) -> None:
    files = deploy_toml_files()
    assert {CONTAINER / "luccs.toml", COMPOSE_DIR / "luccs.toml", DEPLOY / "luccs.example.toml"} <= set(files)
    for path in files:
        if path == COMPOSE_DIR / "luccs.toml":  # names the mounted certificate: loads where it is mounted
            path = compose_config(tmp_path, compose_secrets)
        load_settings(path)  # raises ConfigError with the file and key on any problem


def test_container_configurations_listen_on_every_interface(tmp_path: Path, compose_secrets: Path) -> None:
    for path in (CONTAINER / "luccs.toml", compose_config(tmp_path, compose_secrets)):
        assert load_settings(path).api.host == "0.0.0.0", path


# --- Dockerfile ---------------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, arguments = full.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends inside a continuation line"
    return instructions


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def dockerignore_allows(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path (or one of its parent folders) decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.removeprefix("!").strip().strip("/")
        regex = re.escape(body).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            included = negated
    return included


def dockerignore_patterns() -> list[str]:
    lines = (CONTAINER / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def test_dockerignore_matcher() -> None:
    patterns = ["*", "!shared/", "**/__pycache__"]
    assert dockerignore_allows(patterns, "shared/config.py")
    assert not dockerignore_allows(patterns, "shared/__pycache__/config.cpython-311.pyc")
    assert not dockerignore_allows(patterns, "var/procedure.key")


def test_dockerfile_builds_from_python_311_slim() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))
    args = dict(
        arguments.split("=", 1) for keyword, arguments in instructions if keyword == "ARG" and "=" in arguments
    )
    bases = [arguments.split()[0] for keyword, arguments in instructions if keyword == "FROM"]
    assert bases
    for base in bases:
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        assert resolved == "python:3.11-slim"


def test_dockerfile_runs_luccs_fallback_as_non_root(tmp_path: Path) -> None:
    stage = final_stage(dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8")))
    users = [arguments for keyword, arguments in stage if keyword == "USER"]
    assert users, "the final stage must switch to a non-root user"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user.isdigit(), "a numeric uid lets Kubernetes' runAsNonRoot verify it"
    assert [i for i, (keyword, _) in enumerate(stage) if keyword == "USER"][-1] > max(
        i for i, (keyword, _) in enumerate(stage) if keyword == "RUN"
    ), "USER must come after the last RUN of the final stage"

    entrypoint = json.loads(next(a for k, a in stage if k == "ENTRYPOINT"))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert entrypoint == ["luccs-fallback"]
    assert pyproject["project"]["scripts"]["luccs-fallback"] == "services.cli:main"
    cmd = json.loads(next(a for k, a in stage if k == "CMD"))
    assert cmd == ["all", "--config", IMAGE_CONFIG]
    assert cli_accepts(cmd[0], tmp_path)


def test_dockerfile_exposes_the_default_ports_and_checks_health_with_python() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    stage = final_stage(dockerfile_instructions(text))
    exposed: set[int] = set()
    for keyword, arguments in stage:
        if keyword == "EXPOSE":
            for item in arguments.split():
                low, _, high = item.split("/")[0].partition("-")
                exposed.update(range(int(low), int(high or low) + 1))
    defaults = Settings()
    assert {service_port(defaults, name) for name in SERVICE_NAMES} <= exposed

    healthcheck = next(arguments for keyword, arguments in stage if keyword == "HEALTHCHECK")
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert command[0] == "python"
    assert "curl" not in text and "wget" not in text
    copies = {arguments.split()[-1]: arguments.split()[-2] for keyword, arguments in stage if keyword == "COPY"}
    assert copies[command[1]] == "deploy/container/healthcheck.py"
    assert copies[IMAGE_CONFIG] == "deploy/container/luccs.toml"


def test_dockerfile_installs_the_project_with_pip_from_the_repository() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))
    copied = [a.split()[:-1] for k, a in instructions if k == "COPY" and not a.startswith("--from")]
    sources = [source.rstrip("/") for sources in copied for source in sources if not source.startswith("--")]
    assert {"pyproject.toml", "README.md", "shared", "services"} <= set(sources)
    assert any(k == "RUN" and re.search(r"pip install /src\b", a) for k, a in instructions)
    patterns = dockerignore_patterns()
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
        assert dockerignore_allows(patterns, source), f"COPY {source} is excluded by Dockerfile.dockerignore"
    for private in ("var/procedure.key", "var/procedure.db", ".venv/bin/python", ".git/config",
                    "deploy/compose/.env", "deploy/compose/secrets/tls_key", "deploy/compose/secrets/sealing_key",
                    "services/notifier/__pycache__/app.cpython-311.pyc", "tests/conftest.py"):
        assert not dockerignore_allows(patterns, private), f"{private} would be sent to the build"


# --- the image's helper scripts -----------------------------------------------------------------------


def test_healthcheck_finds_the_services_and_their_ports(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, compose_secrets: Path
) -> None:
    health = load_module(CONTAINER / "healthcheck.py")
    argv = ["/opt/luccs/venv/bin/python", "/opt/luccs/venv/bin/luccs-fallback", "notifier", "--config", "/x.toml"]
    assert health.parse_command(argv) == ("notifier", "/x.toml")
    assert health.parse_command(["luccs-fallback", "--config=all", "detector"]) == ("detector", "all")
    assert health.parse_command(["sh", "-c", "true"]) == (None, None)
    assert health.services_of("all") == SERVICE_NAMES
    assert health.services_of("migrate") == ()
    assert health.probe_host("0.0.0.0") == "127.0.0.1"
    assert health.probe_host("::") == "[::1]"
    assert health.probe_host("10.1.2.3") == "10.1.2.3"
    assert health.health_urls("migrate", None) == []

    config = compose_config(tmp_path, compose_secrets)
    settings = load_settings(config)
    assert settings.api.uses_tls  # the compose ports speak https: so does its healthcheck
    assert health.health_urls("all", str(config)) == [
        f"https://127.0.0.1:{service_port(settings, name)}/healthz" for name in SERVICE_NAMES
    ]
    monkeypatch.setenv("LUCCS_PROCEDURE__PORT", "9102")
    assert health.health_urls("procedure", str(config), path="/readyz") == ["https://127.0.0.1:9102/readyz"]
    plain = tmp_path / "plain.toml"
    plain.write_text("", encoding="utf-8")
    assert health.health_urls("procedure", str(plain), path="/readyz") == ["http://127.0.0.1:9102/readyz"]


def test_check_install_reports_files_the_install_lacks(tmp_path: Path) -> None:
    check = load_module(CONTAINER / "check_install.py")
    source, installed = tmp_path / "src", tmp_path / "site"
    for root in (source, installed):
        (root / "pkg" / "__pycache__").mkdir(parents=True)
        (root / "pkg" / "__init__.py").write_text("", encoding="utf-8")
    (source / "pkg" / "templates").mkdir()
    (source / "pkg" / "templates" / "opened.txt").write_text("hello", encoding="utf-8")
    (source / "pkg" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"")
    assert check.missing_files(source, {"pkg": installed / "pkg"}) == ["pkg/templates/opened.txt"]
    (installed / "pkg" / "templates").mkdir()
    (installed / "pkg" / "templates" / "opened.txt").write_text("hello", encoding="utf-8")
    assert check.missing_files(source, {"pkg": installed / "pkg"}) == []


# --- Docker Compose -----------------------------------------------------------------------------------

_COMPOSE_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``, ``$$``."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        value = env.get(name)
        if op == ":-":
            return value or arg
        if op == "-":
            return arg if value is None else value
        if op in (":?", "?") and (value is None or (op == ":?" and not value)):
            raise KeyError(f"{name}: {arg}")
        if value is None:
            raise KeyError(f"{name} is not set and has no default")
        return value

    return _COMPOSE_VARIABLE.sub(substitute, text)


def compose() -> dict[str, Any]:
    return as_dict(yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text(encoding="utf-8")))


def compose_services() -> dict[str, dict[str, Any]]:
    return {name: as_dict(service) for name, service in as_dict(compose()["services"]).items()}


def env_example() -> tuple[dict[str, str], set[str]]:
    """The variables .env.example sets, and those it only mentions in comments (``# NAME=``)."""
    values: dict[str, str] = {}
    mentioned: set[str] = set()
    for line in (COMPOSE_DIR / ".env.example").read_text(encoding="utf-8").splitlines():
        if match := re.fullmatch(r"(\w+)=(.*)", line.strip()):
            values[match.group(1)] = match.group(2)
        elif match := re.fullmatch(r"#\s*(\w+)=.*", line.strip()):
            mentioned.add(match.group(1))
    return values, mentioned


def luccs_services() -> dict[str, dict[str, Any]]:
    """The compose services running the luccs-fallback image (built from deploy/container/Dockerfile)."""
    found = {
        name: service
        for name, service in compose_services().items()
        if as_dict(service.get("build", {})).get("dockerfile") == "deploy/container/Dockerfile"
    }
    assert found
    return found


def service_env(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    assert isinstance(environment, dict), "use the mapping form of environment"
    return {str(name): str(value) for name, value in environment.items()}


def compose_settings(
    service: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, compose_secrets: Path
) -> Settings:
    """The settings a compose container loads, with ONLY the secrets it mounts present at /run/secrets/."""
    mounted = tmp_path / f"mounted-{uuid.uuid4().hex[:8]}"
    mounted.mkdir()
    for name in service_secrets(service):
        source = as_dict(compose()["secrets"][name])["file"]
        (mounted / name).write_bytes((compose_secrets / Path(source).name).read_bytes())
    env = {name: with_files_at(interpolate(value, {}), {COMPOSE_SECRETS: mounted})
           for name, value in service_env(service).items()}
    config = tmp_path / "compose-luccs.toml"
    config.write_text(with_files_at((COMPOSE_DIR / "luccs.toml").read_text(encoding="utf-8"),
                                    {COMPOSE_SECRETS: mounted}), encoding="utf-8")
    return load_with_env(config, env, monkeypatch)


def service_secrets(service: dict[str, Any]) -> list[str]:
    """The names of the secrets a compose service mounts (short syntax only)."""
    return [str(name) for name in as_list(service.get("secrets", []))]


def command_of(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    assert isinstance(command, list), "give the command as a list"
    return [str(part) for part in command]


def test_compose_has_the_whole_topology() -> None:
    services = compose_services()
    assert {"kafka", "postgres", "procedure", "notifier"} <= set(services)
    by_command: dict[str, list[str]] = {}
    for name, service in luccs_services().items():
        by_command.setdefault(command_of(service)[0], []).append(name)
    assert len(by_command["procedure"]) == 2, "two procedure instances: a leader and a standby"
    assert len(by_command["notifier"]) == 1
    assert len(by_command["detector"]) >= 3, "three detectors: three vantage points"
    assert by_command["migrate"]
    for name in by_command["procedure"]:
        assert "deploy" not in services[name], "two named instances, each with its own host port, not replicas"
    ports = [services[name]["ports"] for name in by_command["procedure"]]
    assert ports[0] != ports[1]


def test_compose_luccs_services_use_real_subcommands_and_the_mounted_config(tmp_path: Path) -> None:
    for name, service in luccs_services().items():
        command = command_of(service)
        assert command[0] in ("migrate", *SERVICE_NAMES), name
        assert cli_accepts(command[0], tmp_path), name
        assert command[1:] == ["--config", IMAGE_CONFIG], name
        mounts = [str(volume) for volume in as_list(service["volumes"])]
        assert f"./luccs.toml:{IMAGE_CONFIG}:ro" in mounts, name


def test_compose_env_names_are_real_settings() -> None:
    for name, service in luccs_services().items():
        for variable in service_env(service):
            assert variable.startswith("LUCCS_"), f"{name}: {variable} is not a luccs setting"
            assert setting_path(variable) is not None, f"{name}: {variable} matches no settings field"


def strings_in(value: object) -> Iterator[str]:
    """Every string of a parsed YAML document, keys included (where Compose interpolates)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings_in(key)
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def test_compose_secrets_come_from_files_never_from_the_environment(compose_secrets: Path) -> None:
    top = as_dict(compose()["secrets"])
    for name, secret in top.items():
        source = str(as_dict(secret)["file"])  # a file, not `environment:`
        assert source.startswith("./secrets/"), f"secret {name}: {source} is not under ./secrets/"
        assert (compose_secrets / Path(source).name).is_file(), f"make-secrets.sh does not make {source}"
    ignored = (COMPOSE_DIR / ".gitignore").read_text(encoding="utf-8").split()
    assert ".env" in ignored and "secrets/" in ignored

    references = [m for text in strings_in(compose()) for m in _COMPOSE_VARIABLE.finditer(text)]
    assert not [m.group("name") for m in references if m.group("op") in (":?", "?")], "no required variables"
    optional = {m.group("name") for m in references if m.group("op") in (":-", "-")}
    values, mentioned = env_example()
    assert values == {} and optional <= mentioned, ".env.example only mentions the optional, non-secret choices"

    secret_names = secret_env_names()
    used: set[str] = set()
    for name, service in compose_services().items():
        mounted = service_secrets(service)
        assert set(mounted) <= set(top), f"{name}: mounts an undeclared secret"
        used.update(mounted)
        for variable, value in service_env(service).items():
            assert variable not in secret_names, f"{name}: {variable} puts a secret in the environment"
            assert "PASSWORD" not in variable or variable.endswith("_FILE"), f"{name}: {variable}"
            if variable.endswith("_FILE"):
                assert value.startswith(COMPOSE_SECRETS), f"{name}: {variable} must point at a mounted secret"
                assert value.removeprefix(COMPOSE_SECRETS) in mounted, f"{name}: {variable}: {value} not mounted"
        if name in luccs_services():
            assert {"tls_cert", "tls_key", "tls_ca"} <= set(mounted), f"{name}: its config names the certificate"
    assert used == set(top), f"declared but never mounted: {set(top) - used}"
    assert service_env(compose_services()["postgres"])["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"


def test_compose_secret_files_fit_together(compose_secrets: Path) -> None:
    password = (compose_secrets / "postgres_password").read_text(encoding="utf-8").strip()
    for database in ("procedure", "notifier"):
        url = make_url((compose_secrets / f"{database}_database_url").read_text(encoding="utf-8").strip())
        assert url.password == password and url.database == f"luccs_{database}"
    # The certificate chains to the CA the procedure service trusts and names every service it is reached by.
    context = ssl.create_default_context(cafile=str(compose_secrets / "tls_ca"))
    context.load_cert_chain(str(compose_secrets / "tls_cert"), str(compose_secrets / "tls_key"))
    names = {name for name, service in luccs_services().items() if command_of(service)[0] in SERVICE_NAMES}
    certificate = x509.load_pem_x509_certificate((compose_secrets / "tls_cert").read_bytes())
    alt = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names | {"localhost"} <= set(alt.get_values_for_type(x509.DNSName))
    for path in compose_secrets.iterdir():
        assert path.stat().st_mode & 0o777 in (0o444, 0o600), path  # readable in the containers, CA key kept
    assert compose_secrets.stat().st_mode & 0o777 == 0o700


def test_compose_configurations_load_and_fit_together(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, compose_secrets: Path
) -> None:
    services = compose_services()
    kafka_env = service_env(services["kafka"])
    postgres_env = service_env(services["postgres"])
    detector_ids: list[str] = []
    databases: dict[str, str] = {}
    for name, service in luccs_services().items():
        settings = compose_settings(service, monkeypatch, tmp_path, compose_secrets)
        command = command_of(service)[0]
        if command == "migrate":  # upgrades both databases: both must be the services' PostgreSQL ones
            databases["migrate"] = settings.database_url("procedure")
            databases["migrate-notifier"] = settings.database_url("notifier")
            continue
        assert settings.api.host == "0.0.0.0"
        assert settings.api.uses_tls, f"{name}: its port speaks https"
        assert f"://{settings.kafka.bootstrap_servers}" in kafka_env["KAFKA_ADVERTISED_LISTENERS"], name
        ports = [str(port) for port in service.get("ports", [])]
        assert any(port.rsplit(":", 1)[-1] == str(service_port(settings, command)) for port in ports), name
        if command == "detector":
            detector_ids.append(settings.detector.instance_id)
        else:
            databases[command] = settings.database_url("procedure" if command == "procedure" else "notifier")
        assert settings.api.operator_tokens and settings.api.viewer_tokens and settings.api.bureau_tokens, name
        if command == "procedure":
            assert settings.procedure.sealing_key is not None, "an ephemeral data_dir would lose a generated key"
            notifier_url = str(settings.procedure.notifier_url)
            assert notifier_url.startswith("https://") and settings.procedure.notifier_ca_file is not None
            notifier = next(n for n, s in luccs_services().items() if command_of(s)[0] == "notifier")
            assert make_url(notifier_url.replace("https", "postgresql", 1)).host == notifier
        if command == "notifier":
            assert settings.smtp.password is not None and settings.smtp.username
    assert len(set(detector_ids)) == len(detector_ids) >= 3, "every vantage point needs its own instance_id"
    urls = {role: make_url(url) for role, url in databases.items()}
    for role, url in urls.items():
        assert url.get_backend_name() == "postgresql", role
        assert url.host == "postgres", role
        assert url.username == postgres_env["POSTGRES_USER"], role
    assert urls["migrate"].database == urls["procedure"].database == postgres_env["POSTGRES_DB"]
    assert urls["migrate-notifier"] == urls["notifier"]
    assert urls["notifier"].database != urls["procedure"].database, "both have an 'eos' table: two databases"
    init_sql = "\n".join(p.read_text(encoding="utf-8") for p in sorted((COMPOSE_DIR / "initdb").glob("*.sql")))
    assert re.search(rf"CREATE DATABASE {urls['notifier'].database}\b", init_sql)
    assert "./initdb:/docker-entrypoint-initdb.d:ro" in [str(v) for v in as_list(services["postgres"]["volumes"])]


def test_compose_infrastructure() -> None:
    services = compose_services()
    kafka, postgres = services["kafka"], services["postgres"]
    assert str(kafka["image"]).startswith("apache/kafka:")
    kafka_env = service_env(kafka)
    assert set(kafka_env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert kafka_env["CLUSTER_ID"]
    assert kafka_env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", "the services create their own topics"
    assert kafka_env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{kafka_env['KAFKA_NODE_ID']}@")
    assert str(postgres["image"]).startswith("postgres:16")


def test_compose_healthchecks_and_dependencies() -> None:
    services = compose_services()
    luccs = luccs_services()
    for name, service in services.items():
        check = as_dict(service.get("healthcheck"))
        if name in luccs and command_of(service)[0] == "migrate":
            assert check.get("disable") is True  # a one-shot job: its exit code is what counts
            continue
        test = [str(part) for part in as_list(check["test"])]
        assert test[0] in ("CMD", "CMD-SHELL"), name
        if name in luccs:
            assert test[1:3] == ["python", "/opt/luccs/healthcheck.py"], name
        for dependency, condition in as_dict(service.get("depends_on", {})).items():
            wanted = as_dict(condition)["condition"]
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if wanted == "service_healthy":
                assert not as_dict(services[dependency]["healthcheck"]).get("disable"), dependency
    conditions = {
        name: {dep: as_dict(cond)["condition"] for dep, cond in as_dict(service.get("depends_on", {})).items()}
        for name, service in luccs.items()
    }
    for name, service in luccs.items():
        command = command_of(service)[0]
        needs = conditions[name]
        if command in SERVICE_NAMES:
            assert needs.get("kafka") == "service_healthy", name
        if command in ("procedure", "notifier", "migrate"):
            assert needs.get("postgres") == "service_healthy", name
        if command in ("procedure", "notifier"):
            migrate = next(n for n, s in luccs.items() if command_of(s)[0] == "migrate")
            assert needs.get(migrate) == "service_completed_successfully", name


# --- Kubernetes ---------------------------------------------------------------------------------------


def k8s_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document is not None:
                yield path, as_dict(document)


def k8s(kind: str) -> dict[str, dict[str, Any]]:
    """The documents of one kind by name (the Secret template left out: it is not applied)."""
    return {
        str(as_dict(doc.get("metadata", {})).get("name", path.name)): doc
        for path, doc in k8s_documents()
        if doc["kind"] == kind and path.name != "secret.template.yaml"
    }


def secret_templates() -> dict[str, dict[str, Any]]:
    """The Secrets of secret.template.yaml by name (the only file that has Secrets)."""
    documents = [(path, doc) for path, doc in k8s_documents() if doc["kind"] == "Secret"]
    assert {path.name for path, _ in documents} == {"secret.template.yaml"}
    return {str(doc["metadata"]["name"]): doc for _, doc in documents}


@pytest.fixture(scope="module")
def pem_stand_ins() -> dict[str, bytes]:
    return make_pem_stand_ins()


def make_pem_stand_ins() -> dict[str, bytes]:
    """Real PEM files standing in for the template's certificate placeholders (trustme)."""
    ca = trustme.CA()
    leaf = ca.issue_cert("procedure", "notifier", "detector", "localhost")
    return {"tls.crt": leaf.cert_chain_pems[0].bytes(), "tls.key": leaf.private_key_pem.bytes(),
            "ca.crt": ca.cert_pem.bytes(), "kafka-ca.crt": trustme.CA().cert_pem.bytes()}


def mount_secret_volumes(
    deployment: dict[str, Any], container: dict[str, Any], root: Path, pem_stand_ins: dict[str, bytes]
) -> dict[str, Path]:
    """Write the files the kubelet would mount from the Secret volumes of ``container`` (template values, PEM
    stand-ins for certificates) under ``root``; returns mount path -> local folder."""
    templates = secret_templates()
    volumes = {str(v["name"]): as_dict(v) for v in pod_spec(deployment)["volumes"]}
    mounts: dict[str, Path] = {}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "secret" not in volume:
            continue
        assert mount.get("readOnly") is True, mount
        secret = as_dict(volume["secret"])
        values = as_dict(templates[secret["secretName"]]["stringData"])
        items = {str(i["key"]): str(i["path"]) for i in secret.get("items", [])} or {k: k for k in values}
        local = root / str(mount["name"])
        local.mkdir(parents=True, exist_ok=True)
        for key, path in items.items():
            assert key in values, f"{secret['secretName']} has no key {key}"
            content = pem_stand_ins.get(key, str(values[key]).encode())
            (local / path).write_bytes(content)
        mounts[str(mount["mountPath"])] = local
    return mounts


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return as_dict(deployment["spec"]["template"]["spec"])


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(deployment)
    return [as_dict(c) for c in [*spec.get("initContainers", []), *spec["containers"]]]


def container_env(container: dict[str, Any], pod_name: str) -> dict[str, str]:
    """The container's environment as the kubelet would set it: plain values and the pod name only (a
    secret never comes from the environment)."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        entry = as_dict(item)
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
        else:
            assert entry["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            env[entry["name"]] = pod_name
    return env


def k8s_container_settings(
    deployment: dict[str, Any], container: dict[str, Any], root: Path, pem_stand_ins: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    """The settings ``container`` loads: the ConfigMap's file, its environment, ONLY the secret files it mounts."""
    (configmap,) = k8s("ConfigMap").values()
    files = mount_secret_volumes(deployment, container, root, pem_stand_ins)
    config = root / "luccs.toml"
    config.write_text(with_files_at(str(configmap["data"]["luccs.toml"]), files), encoding="utf-8")
    pod_name = f"{container['name']}-5d8f7c9b4-x2x7q"
    env = {variable: with_files_at(value, files) for variable, value in container_env(container, pod_name).items()}
    for variable in env:
        assert setting_path(variable) is not None, f"{container['name']}: {variable} matches no settings field"
    return load_with_env(config, env, monkeypatch)


def test_every_kubernetes_document_is_well_formed() -> None:
    kinds: list[str] = []
    for path, doc in k8s_documents():
        assert doc.get("apiVersion") and doc.get("kind"), path
        kinds.append(str(doc["kind"]))
        if doc["kind"] == "Kustomization":
            continue
        metadata = as_dict(doc["metadata"])
        assert metadata.get("name"), path
        if doc["kind"] != "Namespace":
            assert metadata.get("namespace") == NAMESPACE, f"{path}: {doc['kind']} {metadata['name']}"
    assert {"Namespace", "ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget"} <= set(kinds)
    assert set(k8s("Deployment")) == set(SERVICE_NAMES)


def test_kustomization_lists_everything_but_the_secret_template() -> None:
    (kustomization,) = k8s("Kustomization").values()
    resources = set(as_list(kustomization["resources"]))
    manifests = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert resources == manifests - {"secret.template.yaml"}


def test_kubernetes_secrets_are_templates_mounted_as_files() -> None:
    templates = secret_templates()
    assert set(templates) == {"luccs-fallback", "luccs-fallback-tls"}
    assert templates["luccs-fallback-tls"]["type"] == "kubernetes.io/tls"
    assert {"tls.crt", "tls.key", "ca.crt"} == set(as_dict(templates["luccs-fallback-tls"]["stringData"]))
    used: dict[str, set[str]] = {name: set() for name in templates}
    for template in templates.values():
        values = as_dict(template["stringData"])
        assert values and all("REPLACE_ME" in str(value) for value in values.values()), "placeholders only"
        assert "data" not in template
    secret_names = secret_env_names()
    for name, deployment in k8s("Deployment").items():
        volumes = [as_dict(v) for v in pod_spec(deployment)["volumes"]]
        for volume in volumes:
            if "secret" in volume:
                secret = as_dict(volume["secret"])
                assert secret["secretName"] in templates, name
                keys = {str(i["key"]) for i in secret.get("items", [])} or set(templates[secret["secretName"]][
                    "stringData"])
                used[secret["secretName"]] |= keys
        for container in containers(deployment):
            for item in container.get("env", []):
                entry = as_dict(item)
                assert "secretKeyRef" not in entry.get("valueFrom", {}), f"{name}: {entry['name']} from a Secret"
                assert entry["name"] not in secret_names, f"{name}: {entry['name']} puts a secret in the environment"
                if entry["name"].endswith("_FILE"):
                    assert str(entry["value"]).startswith("/run/secrets/"), f"{name}: {entry['name']}"
    for secret_name, keys in used.items():
        unused = set(templates[secret_name]["stringData"]) - keys
        assert not unused, f"{secret_name}: keys mounted by no pod: {unused}"


def test_kubernetes_configuration_loads_for_every_container(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pem_stand_ins: dict[str, bytes]
) -> None:
    for name, deployment in k8s("Deployment").items():
        spec = pod_spec(deployment)
        config_volumes = {v["name"] for v in spec["volumes"] if "configMap" in v}
        for container in containers(deployment):
            args = [str(a) for a in container["args"]]
            assert args[0] == ("migrate" if container["name"] == "migrate" else name)
            assert cli_accepts(args[0], tmp_path)
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            config_dir, _, file_name = args[args.index("--config") + 1].rpartition("/")
            assert mounts.get(config_dir) in config_volumes, f"{name}/{container['name']}: config not mounted"
            assert file_name == "luccs.toml"
            # Only the files this container mounts exist: a setting naming another one fails to load.
            root = tmp_path / name / container["name"]
            settings = k8s_container_settings(deployment, container, root, pem_stand_ins, monkeypatch)
            assert settings.api.host == "0.0.0.0"
            assert settings.api.uses_tls, f"{name}: its port speaks https"
            assert settings.kafka.uses_sasl and settings.kafka.sasl_password is not None
            if args[0] != "migrate":
                assert settings.api.operator_tokens and settings.api.viewer_tokens and settings.api.bureau_tokens
            if name == "procedure":
                assert make_url(settings.database_url("procedure")).get_backend_name() == "postgresql"
                if container["name"] == "procedure":
                    assert settings.procedure.sealing_key is not None
                    assert str(settings.procedure.notifier_url).startswith("https://notifier:")
            if name == "notifier":
                assert make_url(settings.database_url("notifier")).get_backend_name() == "postgresql"
                assert settings.smtp.password is not None
            if args[0] == "migrate":  # every database it upgrades is a PostgreSQL one, not a file in data_dir
                chosen = args[args.index("--database") + 1] if "--database" in args else None
                for database in ("procedure", "notifier"):
                    if chosen in (None, database):
                        url = make_url(settings.database_url(database))
                        assert url.get_backend_name() == "postgresql", f"{name}/{container['name']}: {database}"


def test_kubernetes_probes_and_ports_match_the_services(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pem_stand_ins: dict[str, bytes]
) -> None:
    for name, deployment in k8s("Deployment").items():
        (container,) = [as_dict(c) for c in pod_spec(deployment)["containers"]]
        settings = k8s_container_settings(deployment, container, tmp_path / name, pem_stand_ins, monkeypatch)
        ports = {str(p.get("name", p["containerPort"])): int(p["containerPort"]) for p in container["ports"]}
        assert list(ports.values()) == [service_port(settings, name)]
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = as_dict(container[probe]["httpGet"])
            assert get["path"] == path, f"{name} {probe}"
            assert get.get("scheme", "HTTP") == ("HTTPS" if settings.api.uses_tls else "HTTP"), f"{name} {probe}"
            port = get["port"]
            assert (ports[port] if isinstance(port, str) else port) == service_port(settings, name), name


def test_kubernetes_pods_are_bounded_and_unprivileged() -> None:
    for name, deployment in k8s("Deployment").items():
        spec = pod_spec(deployment)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert int(spec["securityContext"]["runAsUser"]) != 0, name
        labels = as_dict(deployment["spec"]["template"]["metadata"]["labels"])
        assert as_dict(deployment["spec"]["selector"]["matchLabels"]).items() <= labels.items(), name
        for container in containers(deployment):
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{name}/{container['name']}"
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_kubernetes_replicas_and_strategies() -> None:
    deployments = k8s("Deployment")
    procedure = deployments["procedure"]["spec"]
    assert procedure["replicas"] == 2, "one leader and a standby that takes over"
    assert procedure["strategy"]["type"] == "RollingUpdate", "safe: a stopping leader gives its lease up"
    assert procedure["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    (container,) = pod_spec(deployments["procedure"])["containers"]
    assert not [e for e in container.get("env", []) if e["name"] == "LUCCS_PROCEDURE__INSTANCE_ID"], (
        "the default instance id is unique per process; a fixed one would be shared by both replicas")
    init = [c["args"][0] for c in pod_spec(deployments["procedure"]).get("initContainers", [])]
    assert init == ["migrate"]

    notifier = deployments["notifier"]["spec"]
    (container,) = pod_spec(deployments["notifier"])["containers"]
    fixed_id = any(e["name"] == "LUCCS_NOTIFIER__INSTANCE_ID" and "value" in e for e in container.get("env", []))
    if fixed_id:  # two live notifiers with one id would take each other's deliveries
        assert notifier["replicas"] == 1
        assert notifier["strategy"]["type"] == "Recreate"

    detector = deployments["detector"]
    assert detector["spec"]["replicas"] == 3
    (container,) = pod_spec(detector)["containers"]
    (instance,) = [e for e in container["env"] if e["name"] == "LUCCS_DETECTOR__INSTANCE_ID"]
    assert instance["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_kubernetes_procedure_disruption_budget_keeps_one_instance() -> None:
    procedure = k8s("Deployment")["procedure"]
    labels = as_dict(procedure["spec"]["template"]["metadata"]["labels"])
    budgets = [
        pdb for pdb in k8s("PodDisruptionBudget").values()
        if as_dict(pdb["spec"]["selector"]["matchLabels"]).items() <= labels.items()
    ]
    assert [int(b["spec"]["minAvailable"]) for b in budgets] == [1]


def test_kubernetes_detector_disruption_budget_keeps_a_majority() -> None:
    detector = k8s("Deployment")["detector"]
    replicas = int(detector["spec"]["replicas"])
    labels = as_dict(detector["spec"]["template"]["metadata"]["labels"])
    budgets = [
        pdb for pdb in k8s("PodDisruptionBudget").values()
        if as_dict(pdb["spec"]["selector"]["matchLabels"]).items() <= labels.items()
    ]
    assert len(budgets) == 1
    min_available = int(budgets[0]["spec"]["minAvailable"])
    assert replicas // 2 + 1 <= min_available < replicas


def test_kubernetes_services_reach_their_pods() -> None:
    deployments = k8s("Deployment")
    for name, service in k8s("Service").items():
        selector = as_dict(service["spec"]["selector"])
        targets = [
            d for d in deployments.values()
            if selector.items() <= as_dict(d["spec"]["template"]["metadata"]["labels"]).items()
        ]
        assert len(targets) == 1, f"Service {name} must select the pods of exactly one Deployment"
        (container,) = pod_spec(targets[0])["containers"]
        names = {p.get("name") for p in container["ports"]} | {p["containerPort"] for p in container["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, f"Service {name}: targetPort {port['targetPort']}"


def shipped_configurations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The configuration files of the Compose and Kubernetes examples as the procedure service's container
    sees them (the secret files they name in place; environment overrides left out)."""
    compose = compose_config(tmp_path, make_compose_secrets(tmp_path / "compose-secrets"))
    deployment = k8s("Deployment")["procedure"]
    (container,) = [as_dict(c) for c in pod_spec(deployment)["containers"]]
    root = tmp_path / "kubernetes"
    k8s_container_settings(deployment, container, root, make_pem_stand_ins(), monkeypatch)
    return [compose, root / "luccs.toml"]
