"""Static checks of docker/: no Docker engine, no network.

The compose file is parsed with yaml.safe_load and the Dockerfiles line by line; hadolint
runs on both Dockerfiles when its binary is on PATH (or beside this Python), else skips.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
SLIMTUNE_DOCKERFILE = DOCKER / "Dockerfile"
MLFLOW_DOCKERFILE = DOCKER / "mlflow.Dockerfile"
DOCKERFILES = [SLIMTUNE_DOCKERFILE, MLFLOW_DOCKERFILE]

RAY_SERVICES = ["ray-head", "ray-worker", "ray-worker-edge-box"]
SERVICES = ["postgres", "mlflow", *RAY_SERVICES]
INTERPOLATION = re.compile(r"^\$\{[A-Z_][A-Z0-9_]*(:?[-?][^}]*)?\}$")
CREDENTIALS_IN_URL = re.compile(r"://[^/\s@:]+:[^/\s@]+@")
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY", re.IGNORECASE)


# --- helpers ---------------------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of each instruction, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        result.append((keyword.upper(), args.strip()))
    assert not pending, f"{path.name}: dangling line continuation"
    return result


def args_of(path: Path, keyword: str) -> list[str]:
    return [args for kw, args in instructions(path) if kw == keyword]


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form instruction (after any --flags)."""
    start = args.index("[")
    value = json.loads(args[start:])
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def service(name: str) -> dict:
    return compose()["services"][name]


def as_args(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return value.split() if isinstance(value, str) else [str(v) for v in value]


def environment(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def strings(node) -> list[str]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in [str(k), *strings(v)]]
    if isinstance(node, list):
        return [s for item in node for s in strings(item)]
    return [] if node is None else [str(node)]


# --- Dockerfiles -------------------------------------------------------------------------


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_from_is_pinned_by_a_tag(path):
    froms = args_of(path, "FROM")
    assert froms, f"{path.name} has no FROM"
    for args in froms:
        image = next(a for a in args.split() if not a.startswith("--"))
        assert "$" not in image, f"{path.name}: FROM {image} is not a literal image"
        name, _, digest = image.partition("@")
        last = name.rsplit("/", 1)[-1]
        assert ":" in last or digest, f"{path.name}: FROM {image} has no tag"
        tag = last.partition(":")[2]
        assert tag and tag != "latest", f"{path.name}: FROM {image} is not pinned"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_runs_as_a_non_root_user(path):
    users = args_of(path, "USER")
    assert users, f"{path.name} has no USER"
    user, _, group = users[-1].partition(":")
    assert user not in {"root", "0"}, f"{path.name}: final USER is root"
    assert group not in {"root", "0"}, f"{path.name}: final USER's group is root"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_has_a_healthcheck(path):
    checks = args_of(path, "HEALTHCHECK")
    assert len(checks) == 1, f"{path.name}: expected one HEALTHCHECK, found {len(checks)}"
    assert checks[0].upper() != "NONE"
    assert "CMD" in checks[0]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_no_remote_add_and_no_secrets(path):
    for args in args_of(path, "ADD"):
        assert not re.search(r"\bhttps?://", args), f"{path.name}: ADD {args}"
    text = path.read_text()
    assert "password=" not in text.lower(), f"{path.name} sets a password"
    assert "secret" not in text.lower(), f"{path.name} mentions a secret"
    for kw in ("ARG", "ENV"):
        for args in args_of(path, kw):
            for token in args.split():
                name = token.partition("=")[0]
                assert not SECRET_NAME.search(name), f"{path.name}: {kw} {name}"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_pip_installs_keep_no_cache(path):
    pip_lines = [a for kw, a in instructions(path) if kw == "RUN" and "pip install" in a]
    assert pip_lines
    for args in pip_lines:
        for command in re.split(r"&&|;|\bthen\b|\belse\b", args):
            if "pip install" in command:
                assert "--no-cache-dir" in command, f"{path.name}: {command.strip()}"


def test_slimtune_image_installs_cpu_torch_first_then_the_project():
    runs = args_of(SLIMTUNE_DOCKERFILE, "RUN")
    torch_at = next(i for i, a in enumerate(runs) if '"torch==${TORCH_VERSION}"' in a)
    project_at = next(i for i, a in enumerate(runs) if re.search(r"pip install .* \.(\s|$)", a))
    assert torch_at < project_at
    assert '--index-url "${TORCH_INDEX_URL}"' in runs[torch_at]
    assert "TORCH_VERSION=2.13.0" in args_of(SLIMTUNE_DOCKERFILE, "ARG")
    # The index URL is a build argument with no default host written into the file.
    index_args = [a for a in args_of(SLIMTUNE_DOCKERFILE, "ARG") if a.startswith("TORCH_INDEX")]
    assert index_args in (["TORCH_INDEX_URL"], ["TORCH_INDEX_URL="]), index_args
    assert not re.search(r"https?://", SLIMTUNE_DOCKERFILE.read_text())


def test_slimtune_image_copies_every_package_dir_of_the_wheel():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dirs = set(project["tool"]["setuptools"]["package-dir"].values())
    copied = set()
    for args in args_of(SLIMTUNE_DOCKERFILE, "COPY"):
        sources = [a for a in args.split() if not a.startswith("--")][:-1]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the build context"
            copied.add(source.rstrip("/"))
    assert package_dirs <= copied, f"not copied: {sorted(package_dirs - copied)}"
    assert {"pyproject.toml", project["project"]["readme"]} <= copied


def test_slimtune_image_ships_fashion_mnist_and_runs_slimtune():
    runs = " ".join(args_of(SLIMTUNE_DOCKERFILE, "RUN"))
    assert re.search(r"apt-get install -y --no-install-recommends\s+\S*dataset-fashion-mnist",
                     runs)
    assert "rm -rf /var/lib/apt/lists/*" in runs
    (entrypoint,) = args_of(SLIMTUNE_DOCKERFILE, "ENTRYPOINT")
    assert exec_form(entrypoint) == ["slimtune"]
    (base,) = args_of(SLIMTUNE_DOCKERFILE, "FROM")
    assert base.startswith("python:3.11-slim")
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".git", "runs"} <= set(ignore)


def test_mlflow_image_installs_mlflow_and_checks_health():
    runs = " ".join(args_of(MLFLOW_DOCKERFILE, "RUN"))
    assert '"mlflow==${MLFLOW_VERSION}"' in runs and "psycopg2-binary" in runs
    assert "MLFLOW_VERSION=3.17.*" in args_of(MLFLOW_DOCKERFILE, "ARG")
    (check,) = args_of(MLFLOW_DOCKERFILE, "HEALTHCHECK")
    command = " ".join(exec_form(check))
    assert "urllib.request" in command and "/health" in command
    assert "curl" not in command and "wget" not in command


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(_hadolint() is None, reason="hadolint is not installed")
@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(path):
    proc = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- compose.yaml ----------------------------------------------------------------------


def test_compose_has_the_services_each_with_an_image_or_a_build():
    services = compose()["services"]
    assert set(SERVICES) <= set(services)
    for name, svc in services.items():
        assert svc.get("image") or svc.get("build"), f"{name}: neither image nor build"
        build = svc.get("build")
        if build:
            context = DOCKER / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build["dockerfile"]
            assert (context / dockerfile).is_file(), f"{name}: {context / dockerfile}"
    assert services["postgres"]["image"] == "postgres:16"
    for name in RAY_SERVICES:
        svc = services[name]
        assert svc["build"]["dockerfile"] == "docker/Dockerfile"
        assert (DOCKER / svc["build"]["context"]).resolve() == ROOT


def test_every_published_port_is_bound_to_loopback():
    published = 0
    for name, svc in compose()["services"].items():
        for port in svc.get("ports", []):
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"
    assert published == 2
    assert "ports" not in service("postgres")


def test_only_the_ports_a_user_needs_are_published():
    """The Job API (8265) and MLflow (5000); the GCS stays inside the compose network."""
    published = {name: [str(p) for p in svc.get("ports", [])]
                 for name, svc in compose()["services"].items() if svc.get("ports")}
    assert published == {"mlflow": ["127.0.0.1:5000:5000"],
                         "ray-head": ["127.0.0.1:8265:8265"]}


def test_ray_token_auth_and_mlflow_basic_auth_are_on():
    for name in RAY_SERVICES:
        env = environment(service(name))
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN"] == "${RAY_AUTH_TOKEN:?set RAY_AUTH_TOKEN}", name
        assert env["MLFLOW_TRACKING_PASSWORD"].startswith("${MLFLOW_TRACKING_PASSWORD:?"), name
    mlflow = service("mlflow")
    args = as_args(mlflow["command"])
    assert args[args.index("--app-name") + 1] == "basic-auth"
    env = environment(mlflow)
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"].startswith("${MLFLOW_TRACKING_PASSWORD:?")
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"].startswith("${MLFLOW_FLASK_SERVER_SECRET_KEY:?")
    for name in RAY_SERVICES:  # the nodes log in as the admin MLflow creates
        assert environment(service(name))["MLFLOW_TRACKING_USERNAME"] == \
            env["MLFLOW_AUTH_ADMIN_USERNAME"]


def test_no_literal_passwords():
    doc = compose()
    for text in strings(doc):
        assert not CREDENTIALS_IN_URL.search(text), f"credentials in a URL: {text}"
    for name, svc in doc["services"].items():
        for key, value in environment(svc).items():
            if SECRET_NAME.search(key):
                assert INTERPOLATION.match(value), f"{name}: {key} is not taken from the env"
    password = environment(service("postgres"))["POSTGRES_PASSWORD"]
    assert password == "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
    text = COMPOSE.read_text().lower()
    assert "password=" not in text.replace("postgres_password=...", "")


def test_every_service_has_a_healthcheck():
    for name, svc in compose()["services"].items():
        check = svc.get("healthcheck")
        assert check and not check.get("disable"), f"{name}: no healthcheck"
        assert check.get("test"), f"{name}: empty healthcheck"
    assert "pg_isready" in as_args(service("postgres")["healthcheck"]["test"])
    for name in RAY_SERVICES:
        test = " ".join(as_args(service(name)["healthcheck"]["test"]))
        assert "ray status" in test, name


def test_mlflow_server_uses_postgres_and_serves_artifacts():
    svc = service("mlflow")
    args = as_args(svc["command"])
    assert args[:2] == ["mlflow", "server"]
    uri = args[args.index("--backend-store-uri") + 1]
    assert re.fullmatch(r"postgresql://[^@/]+@postgres(:5432)?/mlflow", uri), uri
    assert args[args.index("--artifacts-destination") + 1] == "/mlartifacts"
    assert args[args.index("--host") + 1] == "0.0.0.0"
    assert args[args.index("--port") + 1] == "5000"
    allowed = args[args.index("--allowed-hosts") + 1].split(",")
    assert "mlflow:5000" in allowed  # the Host header the Ray nodes send
    assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert any(str(v).endswith(":/mlartifacts") for v in svc["volumes"])
    assert svc["build"]["dockerfile"] == "mlflow.Dockerfile"


def test_ray_head_and_workers():
    head = service("ray-head")
    head_args = as_args(head.get("entrypoint")) + as_args(head["command"])
    assert head_args[:3] == ["ray", "start", "--head"]
    for flag in ("--port=6379", "--dashboard-host=0.0.0.0", "--block"):
        assert flag in head_args
    assert any(a.startswith("--num-cpus=") for a in head_args)
    assert {str(p) for p in head["ports"]} == {"127.0.0.1:8265:8265"}

    resources = []
    for name in RAY_SERVICES[1:]:
        svc = service(name)
        args = as_args(svc.get("entrypoint")) + as_args(svc["command"])
        assert args[:2] == ["ray", "start"] and "--head" not in args
        assert "--address=ray-head:6379" in args and "--block" in args
        assert svc["depends_on"]["ray-head"]["condition"] == "service_healthy"
        assert "ports" not in svc
        resources += [json.loads(a.partition("=")[2]) for a in args
                      if a.startswith("--resources=")]
    assert {"target:edge-box": 1} in resources


def test_ray_nodes_share_tracking_and_the_runs_volume():
    doc = compose()
    for name in RAY_SERVICES:
        svc = doc["services"][name]
        assert environment(svc)["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        mounts = [str(v) for v in svc["volumes"]]
        assert "runs:/runs" in mounts, name
    assert "runs" in doc["volumes"]


def test_compose_header_says_how_to_run_and_what_is_exposed():
    header = COMPOSE.read_text().split("\n\n", 1)[0]
    assert "POSTGRES_PASSWORD=... docker compose -f docker/compose.yaml up -d" in header
    assert "slimtune run" in header and "--address" in header
    assert "127.0.0.1" in header
    assert "RAY_AUTH_MODE=token" in header and "basic-auth" in header
    assert "only the two ports a user needs are published" in header


# --- the Compose Specification schema (vendored: docker/compose-spec.NOTICE) -------------

COMPOSE_SCHEMA = DOCKER / "compose-spec.schema.json"


def _compose_errors(doc: dict) -> list[str]:
    import warnings

    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    with warnings.catch_warnings():  # the schema names draft 2019-09 by an old URL
        warnings.simplefilter("ignore", DeprecationWarning)
        validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(doc)]


def test_compose_file_is_valid_against_the_compose_spec_schema():
    assert (DOCKER / "compose-spec.NOTICE").is_file()
    assert _compose_errors(compose()) == []


def test_the_schema_check_catches_broken_compose_files():
    broken = compose()
    broken["services"]["mlflow"]["healthcheck"]["retries"] = "three"
    broken["services"]["ray-head"]["portz"] = ["8265:8265"]
    broken["services"]["postgres"]["depends_on"] = {"mlflow": {"condition": "sometimes"}}
    errors = _compose_errors(broken)
    assert len(errors) >= 3, errors
