"""The deployment files: Dockerfile, Kubernetes manifests, the Helm chart and docker compose.

No container engine, cluster or Helm binary runs here. What is checked instead: every file parses; the
objects have the fields operators rely on (probes, security context, disruption budget, grace periods);
the config file each one ships is validated by authproxy itself, with the mounted secret files and the
environment the container would get; the chart is rendered by tests/support/manifests.py (and compared
with real Helm when the helm-python-sdk package is installed) and must match the standalone manifest;
and the Dockerfile's install path — build a wheel from exactly what the build stage copies, install it
into a fresh virtualenv — is run for real, down to the image's HEALTHCHECK command against `serve`.
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from support.harness import free_port
from support.manifests import (
    DockerIgnore,
    PodFiles,
    TemplateError,
    container,
    dockerfile_stages,
    find,
    load_documents,
    render_chart,
)

from authproxy import cli
from authproxy.config import Config, load, split_host_port
from authproxy.devidp import DevIdpSettings
from authproxy.devidp.cli import build_parser as devidp_parser

REPO = Path(__file__).resolve().parents[1]
KUBERNETES = REPO / "deploy" / "kubernetes"
CHART = REPO / "deploy" / "helm" / "authproxy"
COMPOSE_DIR = REPO / "deploy" / "compose"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]

PLACEHOLDER = "CHANGE-ME"
CLIENT_ID = str(uuid.uuid4())
CLIENT_SECRET = secrets.token_hex(32)
COOKIE_SECRET = secrets.token_urlsafe(32)
FILLED = {"client_secret": CLIENT_SECRET, "cookie_secrets": COOKIE_SECRET}
CHART_SECRETS = {"secret": {"clientSecret": CLIENT_SECRET, "cookieSecrets": [COOKIE_SECRET]}}
# Labels Helm adds that a hand-written manifest has no reason to carry.
CHART_ONLY_LABELS = {"app.kubernetes.io/version", "app.kubernetes.io/managed-by", "helm.sh/chart"}


def fill_placeholders(key: str, value: str) -> str:
    if key == "config.toml":  # the ConfigMap's one placeholder: the organization ID
        return value.replace(f'client_id = "{PLACEHOLDER}"', f'client_id = "{CLIENT_ID}"')
    return FILLED[key] if value == PLACEHOLDER else value


def manifest(name: str) -> list[dict[str, Any]]:
    return load_documents((KUBERNETES / name).read_text(encoding="utf-8"))


def chart(overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    rendered = render_chart(CHART, {**copy.deepcopy(CHART_SECRETS), **(overrides or {})})
    return [doc for path, text in rendered.items() if path.endswith(".yaml") for doc in load_documents(text)]


def config_argument(spec: dict[str, Any]) -> str:
    """The file after `-c` in a container's arguments (or a compose command)."""
    arguments: list[str] | None = spec.get("args") or spec.get("command")
    assert arguments is not None, spec
    return arguments[arguments.index("-c") + 1]


def check_config(
    files: PodFiles, config_path: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    """`authproxy check-config` on the container's config file, with its files and environment."""
    local = files.local(config_path)
    local.write_text(files.rewrite(local.read_text(encoding="utf-8")), encoding="utf-8")
    for name in list(os.environ):
        if name.upper().startswith("AUTHPROXY_"):
            monkeypatch.delenv(name)
    for name, value in files.env.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    code = cli.main(["check-config", "-c", str(local)])
    return code, capsys.readouterr().err


def valid_config(
    docs: list[dict[str, Any]],
    deployment: dict[str, Any],
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Config:
    files = PodFiles.materialize(docs, deployment, "authproxy", root, fill_placeholders)
    path = config_argument(container(deployment, "authproxy"))
    code, errors = check_config(files, path, monkeypatch, capsys)
    assert code == 0, errors
    return load(files.local(path))


def proxy_deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The one Deployment with an authproxy container."""
    (deployment,) = (
        doc
        for doc in docs
        if doc["kind"] == "Deployment"
        and any(spec["name"] == "authproxy" for spec in doc["spec"]["template"]["spec"]["containers"])
    )
    return deployment


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: dict[str, str], deployment: dict[str, Any]) -> bool:
    return selector.items() <= pod_labels(deployment).items()


# --- Kubernetes: every file ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(KUBERNETES.glob("*.yaml")), ids=lambda path: path.name)
def test_every_manifest_parses_and_names_its_objects(path: Path) -> None:
    docs = load_documents(path.read_text(encoding="utf-8"))
    assert docs
    for doc in docs:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], doc
    names = [(doc["kind"], doc["metadata"]["name"]) for doc in docs]
    assert len(names) == len(set(names)), "two objects of one kind share a name"


@pytest.mark.parametrize("name", ["sidecar.yaml", "standalone.yaml"])
def test_deployments_are_hardened_and_sized(name: str) -> None:
    for deployment in (doc for doc in manifest(name) if doc["kind"] == "Deployment"):
        assert_hardened(deployment)


def assert_hardened(deployment: dict[str, Any]) -> None:
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert selects(deployment["spec"]["selector"]["matchLabels"], deployment)
    for spec in pod["containers"]:
        context = spec["securityContext"]
        assert context["runAsNonRoot"] is True, spec["name"]
        assert context["readOnlyRootFilesystem"] is True, spec["name"]
        assert context["allowPrivilegeEscalation"] is False, spec["name"]
        assert context["capabilities"]["drop"] == ["ALL"], spec["name"]
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= spec["resources"][bound].keys(), (spec["name"], bound)


def assert_authproxy_pod(docs: list[dict[str, Any]], deployment: dict[str, Any], config: Config) -> None:
    """The authproxy container agrees with its config file and stops gracefully."""
    pod = deployment["spec"]["template"]["spec"]
    spec = container(deployment, "authproxy")
    assert spec["image"].endswith(f"/authproxy:{VERSION}")
    assert pod["securityContext"]["runAsUser"] == 10001
    ports = {port["name"]: port["containerPort"] for port in spec["ports"]}
    assert ports["http"] == split_host_port(config.server.listen)[1]
    assert ports["metrics"] == split_host_port(config.server.metrics_listen)[1]
    assert spec["livenessProbe"]["httpGet"] == {"path": "/ping", "port": "http"}
    assert spec["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    sleep, seconds = spec["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep == "sleep"
    # After preStop, SIGTERM gives requests shutdown_grace; the worker supervisor adds up to 5 s.
    assert pod["terminationGracePeriodSeconds"] >= int(seconds) + config.server.shutdown_grace + 5
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    secret_volume = next(volume for volume in volumes.values() if "secret" in volume)
    assert secret_volume["secret"]["defaultMode"] == 0o440
    mounts = {mount["mountPath"]: mount for mount in spec["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]], "the read-only root needs a writable /tmp"
    assert all(mount.get("readOnly") for path, mount in mounts.items() if path != "/tmp")
    service = next(
        doc for doc in docs if doc["kind"] == "Service" and selects(doc["spec"]["selector"], deployment)
    )
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http"]


def test_standalone_runs_three_replicas_sharing_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = manifest("standalone.yaml")
    kinds = {doc["kind"]: sum(d["kind"] == doc["kind"] for d in docs) for doc in docs}
    assert kinds == {
        "ConfigMap": 1,
        "Secret": 1,
        "Deployment": 2,
        "Service": 2,
        "PodDisruptionBudget": 1,
        "NetworkPolicy": 1,
    }
    proxy = find(docs, "Deployment", "authproxy")
    assert proxy["spec"]["replicas"] == 3
    assert proxy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    config = valid_config(docs, proxy, tmp_path, monkeypatch, capsys)
    assert_authproxy_pod(docs, proxy, config)
    assert config.server.workers == 1

    budget = find(docs, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 2
    assert selects(budget["spec"]["selector"]["matchLabels"], proxy)

    assert config.session.store == "redis"
    redis_url = urlsplit(config.session.redis_url)
    redis_service = find(docs, "Service", redis_url.hostname)
    assert redis_service["spec"]["ports"][0]["port"] == redis_url.port
    redis = find(docs, "Deployment", "authproxy-redis")
    assert selects(redis_service["spec"]["selector"], redis)
    assert not selects(redis_service["spec"]["selector"], proxy)
    assert not selects(proxy["spec"]["selector"]["matchLabels"], redis)
    policy = find(docs, "NetworkPolicy")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], redis)
    assert selects(policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"], proxy)


def test_sidecar_keeps_the_app_on_loopback_behind_authproxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = manifest("sidecar.yaml")
    assert sorted(doc["kind"] for doc in docs) == ["ConfigMap", "Deployment", "Secret", "Service"]
    deployment = find(docs, "Deployment")
    assert [spec["name"] for spec in deployment["spec"]["template"]["spec"]["containers"]] == [
        "app",
        "authproxy",
    ]
    config = valid_config(docs, deployment, tmp_path, monkeypatch, capsys)
    assert_authproxy_pod(docs, deployment, config)
    assert config.server.listen == "0.0.0.0:4180"
    assert [upstream.url for upstream in config.upstreams] == ["http://127.0.0.1:8080"]
    assert config.session.store == "cookie"

    app = container(deployment, "app")
    assert "volumeMounts" not in app, "the app container must not see authproxy's secrets"
    python, flag, source = app["command"]
    assert (python, flag) == ("python", "-c")
    compile(source, "sidecar app", "exec")
    assert 'host="127.0.0.1", port=8080' in source


@pytest.mark.parametrize("name", ["sidecar.yaml", "standalone.yaml"])
def test_placeholders_cannot_go_live(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = manifest(name)
    for secret in (doc for doc in docs if doc["kind"] == "Secret"):
        assert set(secret["stringData"].values()) == {PLACEHOLDER}, "no real secret belongs in the repository"
    deployment = proxy_deployment(docs)
    files = PodFiles.materialize(docs, deployment, "authproxy", tmp_path)
    code, errors = check_config(
        files, config_argument(container(deployment, "authproxy")), monkeypatch, capsys
    )
    assert code == 2
    # Each CHANGE-ME is refused by name: the organization ID and both secret files.
    keys = [line.split(":", 1)[0] for line in errors.splitlines()]
    assert keys == ["centralauth.client_id", "centralauth.client_secret_file", "session.cookie_secret_file"]


# --- Helm chart ----------------------------------------------------------------------------------------


def without_chart_extras(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` without the labels Helm adds and the checksum annotations that roll Pods on changes."""
    doc = copy.deepcopy(doc)
    for metadata in (doc["metadata"], doc.get("spec", {}).get("template", {}).get("metadata", {})):
        for label in CHART_ONLY_LABELS:
            metadata.get("labels", {}).pop(label, None)
        annotations = metadata.get("annotations", {})
        for name in [name for name in annotations if name.startswith("checksum/")]:
            del annotations[name]
    return doc


def test_chart_renders_the_standalone_manifest() -> None:
    rendered = {(doc["kind"], doc["metadata"]["name"]): doc for doc in chart()}
    standalone = {(doc["kind"], doc["metadata"]["name"]): doc for doc in manifest("standalone.yaml")}
    for secret in (doc for doc in standalone.values() if doc["kind"] == "Secret"):
        secret["stringData"] = {
            key: fill_placeholders(key, value) for key, value in secret["stringData"].items()
        }
    config_key = ("ConfigMap", "authproxy-config")
    rendered_toml = tomllib.loads(rendered[config_key]["data"].pop("config.toml"))
    assert rendered_toml == tomllib.loads(standalone[config_key]["data"].pop("config.toml"))
    assert {key: without_chart_extras(doc) for key, doc in rendered.items()} == standalone
    for doc in rendered.values():
        assert doc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_chart_config_passes_check_config_and_the_pod_agrees_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = chart()
    deployment = find(docs, "Deployment", "authproxy")
    assert_hardened(deployment)
    config = valid_config(docs, deployment, tmp_path, monkeypatch, capsys)
    assert_authproxy_pod(docs, deployment, config)
    assert config.session.redis_url == "redis://authproxy-redis:6379/0"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch("[0-9a-f]{64}", annotations["checksum/config"])
    assert re.fullmatch("[0-9a-f]{64}", annotations["checksum/secret"])


def test_chart_values_reach_the_objects() -> None:
    docs = chart(
        {
            "existingSecret": "my-authproxy",
            "redis": {"enabled": False},
            "config": {"session": {"store": "cookie"}, "server": {"workers": 2, "metrics_listen": None}},
            "ingress": {"enabled": True, "host": "app.example.com", "tlsSecretName": "app-tls"},
            "extraEnv": [{"name": "AUTHPROXY_LOGGING__LEVEL", "value": "debug"}],
            "replicaCount": 5,
        }
    )
    assert sorted(doc["kind"] for doc in docs) == [
        "ConfigMap",
        "Deployment",
        "Ingress",
        "PodDisruptionBudget",
        "Service",
    ]
    deployment = find(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 5
    pod = deployment["spec"]["template"]["spec"]
    assert next(v for v in pod["volumes"] if "secret" in v)["secret"]["secretName"] == "my-authproxy"
    assert "checksum/secret" not in deployment["spec"]["template"]["metadata"]["annotations"]
    assert container(deployment, "authproxy")["env"] == [
        {"name": "AUTHPROXY_LOGGING__LEVEL", "value": "debug"}
    ]
    toml = tomllib.loads(find(docs, "ConfigMap")["data"]["config.toml"])
    assert toml["session"]["store"] == "cookie"
    assert "redis_url" not in toml["session"], "a null value leaves authproxy's default"
    assert "metrics_listen" not in toml["server"]
    assert toml["server"]["workers"] == 2
    backend = find(docs, "Ingress")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "authproxy", "port": {"name": "http"}}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"secret": {"clientSecret": "", "cookieSecrets": [COOKIE_SECRET]}},
            "secret.clientSecret is required",
        ),
        (
            {"secret": {"clientSecret": CLIENT_SECRET, "cookieSecrets": []}},
            "secret.cookieSecrets is required",
        ),
        ({"terminationGracePeriodSeconds": 30}, "terminationGracePeriodSeconds must be at least 35"),
    ],
)
def test_chart_refuses_to_render_a_broken_release(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        chart(overrides)


def test_chart_notes_and_versions() -> None:
    metadata = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert metadata["apiVersion"] == "v2"
    assert metadata["appVersion"] == VERSION
    notes = render_chart(CHART, CHART_SECRETS)["authproxy/templates/NOTES.txt"]
    assert "https://app.example.com/oauth2/callback" in notes
    assert "client_id is still CHANGE-ME" in notes


def test_renderer_matches_real_helm() -> None:
    """The renderer above against Helm itself (Helm 4's Go SDK, from the helm-python-sdk dev dependency)."""
    import helm_python as helm

    variants: list[dict[str, Any]] = [
        CHART_SECRETS,
        {
            **CHART_SECRETS,
            "redis": {"enabled": False},
            "ingress": {"enabled": True, "tlsSecretName": "tls", "annotations": {"a/b": "x"}},
            "config": {"server": {"shutdown_grace": 10.5}, "branding": {"title": 'A <b> & "c"'}},
            "podAnnotations": {"x": "1"},
            "tolerations": [{"key": "a", "operator": "Exists"}],
        },
        {"existingSecret": "mine", "fullnameOverride": "ap", "pdb": {"enabled": False}},
    ]
    for values in variants:
        with helm.Chart.load(str(CHART)) as loaded:
            expected = loaded.render(values, name="authproxy", namespace="default")
        assert render_chart(CHART, values) == expected
        assert helm.lint(str(CHART), values)["errors"] == []


# --- docker compose ----------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    text = (COMPOSE_DIR / "docker-compose.yml").read_text(encoding="utf-8")
    document: dict[str, Any] = yaml.safe_load(text)
    return document


def test_compose_runs_the_proxy_redis_the_fake_and_whoami(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = compose()
    services = spec["services"]
    assert sorted(services) == ["authproxy", "devidp", "redis", "whoami"]
    proxy = services["authproxy"]
    files = PodFiles.from_compose(spec, "authproxy", COMPOSE_DIR, tmp_path)
    code, errors = check_config(files, config_argument(proxy), monkeypatch, capsys)
    assert code == 0, errors
    config = load(files.local(config_argument(proxy)))

    # One network namespace, so the browser and the proxy reach the fake at the same localhost URL.
    assert proxy["network_mode"] == "service:devidp"
    fake = services["devidp"]
    published = {port.rsplit(":", 1)[1]: port for port in fake["ports"]}
    assert all(port.startswith("127.0.0.1:") for port in published.values()), "demo ports stay local"
    for address in (config.server.listen, config.server.metrics_listen):
        assert str(split_host_port(address)[1]) in published
    assert str(urlsplit(config.server.public_url).port) in published
    assert str(urlsplit(config.centralauth.base_url).port) in published
    assert urlsplit(config.centralauth.base_url).hostname == "localhost"

    command = fake["command"]
    assert command[0] == "devidp"
    options = devidp_parser().parse_args(command[1:])
    assert options.listen[1] == urlsplit(config.centralauth.base_url).port
    # The fake accepts the pair (its secret must be exactly 64 characters), and so does the proxy's config.
    DevIdpSettings(client_id=options.client_id, client_secret=options.client_secret)
    assert options.client_id == config.centralauth.client_id
    assert options.client_secret == config.centralauth.client_secret.get_secret_value()

    assert urlsplit(config.session.redis_url).hostname in services
    assert {urlsplit(upstream.url).hostname for upstream in config.upstreams} == {"whoami"}
    python, flag, source = services["whoami"]["entrypoint"]
    assert (python, flag) == ("python", "-c")
    compile(source, "compose whoami", "exec")
    assert 'host="0.0.0.0", port=8080' in source
    assert int(proxy["stop_grace_period"].removesuffix("s")) > config.server.shutdown_grace

    for name in ("authproxy", "devidp", "whoami"):
        service = services[name]
        assert service["image"] == f"authproxy:{VERSION}"
        assert (COMPOSE_DIR / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]


# --- Dockerfile and the image's install path ---------------------------------------------------------


def stages() -> list[Any]:
    return dockerfile_stages((REPO / "Dockerfile").read_text(encoding="utf-8"))


def test_dockerfile_builds_in_one_stage_and_runs_unprivileged_in_another() -> None:
    build, runtime = stages()
    assert build.name and runtime.base == build.base == "${PYTHON_IMAGE}"
    assert any("pip wheel" in run for run in build.all("RUN"))
    assert f"from={build.name}" in " ".join(runtime.all("RUN")), "the runtime stage installs the built wheels"
    assert "--no-index" in " ".join(runtime.all("RUN")), "the runtime stage installs offline, from the wheels"
    assert not re.search(r"apt-get|gcc|build-essential", " ".join(runtime.all("RUN")))
    user = runtime.all("USER")[-1].split(":")[0]
    assert user.isdigit() and int(user) == 10001
    env = dict(item.split("=", 1) for item in " ".join(runtime.all("ENV")).split())
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert runtime.all("EXPOSE") == ["4180 9100"]
    assert json.loads(runtime.all("ENTRYPOINT")[-1]) == ["authproxy"]
    assert json.loads(runtime.all("CMD")[-1]) == ["serve", "-c", "/etc/authproxy/config.toml"]
    assert healthcheck_command()[:2] == ["python", "-c"]


def healthcheck_command() -> list[str]:
    (healthcheck,) = stages()[-1].all("HEALTHCHECK")
    command: list[str] = json.loads(healthcheck.split(" CMD ", 1)[1])
    return command


def build_stage_sources() -> list[str]:
    """The paths the build stage copies from the build context."""
    sources = []
    for copy_args in stages()[0].all("COPY"):
        *paths, _destination = copy_args.split()
        sources += [path for path in paths if not path.startswith("--")]
    return sources


def test_dockerignore_keeps_exactly_the_build_sources() -> None:
    ignore = DockerIgnore((REPO / ".dockerignore").read_text(encoding="utf-8"))
    for source in build_stage_sources():
        path = REPO / source
        files = [path] if path.is_file() else [p for p in path.rglob("*.py") if "__pycache__" not in p.parts]
        assert files, source
        for file in files:
            assert not ignore.excluded(file.relative_to(REPO).as_posix()), file
    for left_out in (".git/HEAD", ".venv/bin/python", "tests/conftest.py", ".pytest_cache/README.md"):
        assert ignore.excluded(left_out), left_out
    assert ignore.excluded("deploy/compose/demo-secrets/cookie_secrets")
    assert ignore.excluded("authproxy/__pycache__/cli.cpython-312.pyc")


def run(*command: str | Path, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    result = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_wheel_installs_into_a_fresh_virtualenv_and_serves(tmp_path: Path) -> None:
    """The Dockerfile's path without Docker: wheel from the copied sources, clean install, serve.

    Dependencies come from the package index through pip's cache; about 20 s when the cache is warm.
    """
    context = tmp_path / "context"
    for source in build_stage_sources():
        source_path = REPO / source
        if source_path.is_dir():
            shutil.copytree(source_path, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            context.mkdir(exist_ok=True)
            shutil.copy2(source_path, context / source)
    env = {name: value for name, value in os.environ.items() if not name.upper().startswith("AUTHPROXY_")}
    env.pop("PIP_NO_CACHE_DIR", None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--quiet",
        "-w",
        tmp_path / "wheels",
        context,
        env=env,
    )
    (wheel,) = (tmp_path / "wheels").glob("authproxy-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheel, env=env, timeout=300)
    assert run(venv / "bin" / "authproxy", "--version", env=env).strip() == f"authproxy {VERSION}"

    spec = compose()
    files = PodFiles.from_compose(spec, "authproxy", COMPOSE_DIR, tmp_path / "root")
    config_path = files.local(config_argument(spec["services"]["authproxy"]))
    config_path.write_text(files.rewrite(config_path.read_text(encoding="utf-8")), encoding="utf-8")
    # The image's own environment, then the compose service's.
    env |= dict(item.split("=", 1) for item in " ".join(stages()[-1].all("ENV")).split()) | files.env
    run(venv / "bin" / "authproxy", "check-config", "-c", config_path, env=env)

    port, metrics_port, closed = free_port(), free_port(), free_port()
    env |= {
        "AUTHPROXY_SERVER__LISTEN": f"127.0.0.1:{port}",
        "AUTHPROXY_SERVER__METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
        "AUTHPROXY_SESSION__REDIS_URL": f"redis://127.0.0.1:{closed}/0",
        "AUTHPROXY_CENTRALAUTH__BASE_URL": f"http://127.0.0.1:{closed}",
        "HEALTHCHECK_URL": f"http://127.0.0.1:{port}/ping",
    }
    python, *healthcheck = healthcheck_command()
    assert python == "python"
    probe = [str(venv / "bin" / "python"), *healthcheck]
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [venv / "bin" / "authproxy", "serve", "-c", config_path], env=env, stdout=output, stderr=output
        )
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(probe, env=env, capture_output=True, check=False).returncode != 0:
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the HEALTHCHECK never passed"
            time.sleep(0.2)
        with pytest.raises(urllib.error.HTTPError) as unready:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=10)
        unready.value.close()
        assert unready.value.code == 503, "readiness must fail while Redis is unreachable"
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as scrape:
            assert b"authproxy_requests" in scrape.read()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=15) == 0, log.read_text()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert subprocess.run(probe, env=env, capture_output=True, check=False).returncode != 0
