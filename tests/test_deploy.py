"""The deployment files: Dockerfile, Kubernetes manifests, the Helm chart and docker compose.

No container engine, cluster or Helm binary runs here. What is checked instead: every file parses; the
objects have the fields operators rely on (probes, security context, disruption budget, grace periods);
the config file each one ships is validated by authproxy itself, with the mounted secret files and the
environment the container would get; the chart is rendered by tests/support/manifests.py (and compared
with real Helm when the helm-python-sdk package is installed) and must match the standalone manifest;
every rendered object (and every manifest) is validated against the Kubernetes API's JSON schemas (the
kubernetes-validate package's copy, offline) and the ServiceMonitor against the CRD's required fields;
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
# Every optional object of the chart on at once, and the Redis Sentinel example.
ALL_OPTIONS = CHART / "ci" / "all-options-values.yaml"
SENTINEL = CHART / "values-sentinel.yaml"
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


def values_file(path: Path) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return values


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


def pod_annotations(deployment: dict[str, Any]) -> dict[str, str]:
    annotations: dict[str, str] = deployment["spec"]["template"]["metadata"].get("annotations", {})
    return annotations


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
    assert [port["name"] for port in container(deployment, "authproxy")["ports"]] == ["http"]
    assert not any(name.startswith("prometheus.io/") for name in pod_annotations(deployment))
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
        # A budget no eviction can satisfy hangs every node drain.
        ({"replicaCount": 2}, r"pdb.minAvailable \(2\) must be below the number of replicas \(2\)"),
        (
            {"autoscaling": {"enabled": True, "minReplicas": 2}},
            r"pdb.minAvailable \(2\) must be below the number of replicas \(2\)",
        ),
        ({"pdb": {"maxUnavailable": 0}}, "pdb.maxUnavailable must be at least 1"),
        ({"pdb": {"minAvailable": None}}, "set pdb.minAvailable or pdb.maxUnavailable"),
        # The ServiceMonitor and the metrics port need a metrics listener on that port, reachable.
        (
            {
                "config": {"server": {"metrics_listen": None}},
                "metrics": {"serviceMonitor": {"enabled": True}},
            },
            "metrics.serviceMonitor.enabled needs config.server.metrics_listen",
        ),
        (
            {"config": {"server": {"metrics_listen": "0.0.0.0:9200"}}},
            r"metrics_listen \(0.0.0.0:9200\) must listen on metrics.port \(9100\)",
        ),
        ({"config": {"server": {"metrics_listen": "127.0.0.1:9100"}}}, "is a loopback address"),
        (
            {"autoscaling": {"enabled": True}, "resources": {"requests": {"cpu": None}}},
            "autoscaling.enabled needs resources.requests.cpu",
        ),
        (
            {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 2}},
            "maxReplicas must be at least autoscaling.minReplicas",
        ),
        ({"redisPassword": {"existingSecret": "redis"}}, "the bundled one .* has no password"),
        ({"networkPolicy": {"enabled": True, "upstreamPorts": []}}, "networkPolicy.upstreamPorts"),
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
        {**CHART_SECRETS, **values_file(ALL_OPTIONS)},
        {**CHART_SECRETS, **merged(values_file(SENTINEL), {"networkPolicy": {"enabled": True}})},
        {
            **CHART_SECRETS,
            "autoscaling": {"enabled": True, "behavior": {}},
            "networkPolicy": {"enabled": True, "metricsFrom": []},
            "config": {"server": {"metrics_listen": None}, "session": {"store": "cookie"}},
            "redis": {"enabled": False},
            "pdb": {"minAvailable": "50%"},
        },
    ]
    for values in variants:
        with helm.Chart.load(str(CHART)) as loaded:
            expected = loaded.render(values, name="authproxy", namespace="default")
        assert render_chart(CHART, values) == expected
        assert helm.lint(str(CHART), values)["errors"] == []


# --- Helm chart: the optional objects, and every document against the Kubernetes schemas ------------------

# The Prometheus Operator's ServiceMonitor is a CRD, and no schema of it is available offline. This is the
# part of its openAPIV3Schema (monitoring.coreos.com/v1) that the chart uses: the required fields
# (spec.selector, spec.endpoints), the types of the others, and the duration syntax of interval and
# scrapeTimeout; keys other than these are refused, so that a misspelt one cannot pass unnoticed.
DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "labels": STRING_MAP, "annotations": STRING_MAP},
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "required": ["matchLabels"],
                    "additionalProperties": False,
                    "properties": {"matchLabels": STRING_MAP},
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": DURATION},
                        },
                    },
                },
            },
        },
    },
}


def kubernetes_versions() -> list[str]:
    """The oldest Kubernetes the chart supports (Chart.yaml's kubeVersion) and the newest with a schema."""
    import kubernetes_validate  # type: ignore[import-untyped]

    floor = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))["kubeVersion"]
    match = re.fullmatch(r">=\s*(\d+\.\d+)\.\d+(?:-0)?", floor)
    assert match, floor
    latest: str = kubernetes_validate.latest_version()
    return [match.group(1), latest]


def schema_problems(doc: dict[str, Any]) -> list[str]:
    """What the API server's schema (strict: no unknown fields) says about `doc`, for each version."""
    import jsonschema  # type: ignore[import-untyped]
    import kubernetes_validate

    name = f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}"
    if doc.get("kind") == "ServiceMonitor":
        validator = jsonschema.Draft202012Validator(SERVICE_MONITOR_SCHEMA)
        return [
            f"{name}: {list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(doc)
        ]
    problems = []
    for version in kubernetes_versions():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{name} (Kubernetes {version}): {list(error.path)}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            problems.append(f"{name}: {error.message}")
    return problems


def merged(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` over `values` as Helm merges a second values file: maps key by key."""
    result = copy.deepcopy(values)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def sentinel_docs(overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The Sentinel example, with the Redis password Secret it expects to find in the namespace."""
    docs = chart(merged(values_file(SENTINEL), overrides or {}))
    docs.append(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "redis-credentials"},
            "stringData": {"password": "s3ntinel-redis-password"},
        }
    )
    return docs


CHART_VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "all-options": values_file(ALL_OPTIONS),
    "sentinel": values_file(SENTINEL),
    "sentinel+networkPolicy": merged(values_file(SENTINEL), {"networkPolicy": {"enabled": True}}),
    "no-metrics+autoscaling": {
        "autoscaling": {"enabled": True},
        "config": {"server": {"metrics_listen": None}},
        "networkPolicy": {"enabled": True},
    },
}


@pytest.mark.parametrize("variant", sorted(CHART_VARIANTS))
def test_every_chart_object_matches_the_kubernetes_schemas(variant: str) -> None:
    docs = chart(CHART_VARIANTS[variant])
    assert docs
    problems = [problem for doc in docs for problem in schema_problems(doc)]
    assert problems == []


@pytest.mark.parametrize("path", sorted(KUBERNETES.glob("*.yaml")), ids=lambda path: path.name)
def test_every_manifest_matches_the_kubernetes_schemas(path: Path) -> None:
    problems = [problem for doc in manifest(path.name) for problem in schema_problems(doc)]
    assert problems == []


def test_the_schema_check_refuses_what_the_api_server_would() -> None:
    """The check above is strict: unknown fields and wrong types fail it, CRD or not."""
    docs = chart(values_file(ALL_OPTIONS))
    deployment = copy.deepcopy(find(docs, "Deployment", "authproxy"))
    deployment["spec"]["replica"] = 3
    assert any("replica" in problem for problem in schema_problems(deployment))
    policy = copy.deepcopy(find(docs, "NetworkPolicy", "authproxy"))
    policy["spec"]["egress"][0]["ports"][0]["proto"] = policy["spec"]["egress"][0]["ports"][0].pop("protocol")
    assert any("proto" in problem for problem in schema_problems(policy))
    autoscaler = copy.deepcopy(find(docs, "HorizontalPodAutoscaler"))
    del autoscaler["spec"]["maxReplicas"]
    assert schema_problems(autoscaler)
    monitor = copy.deepcopy(find(docs, "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["interval"] = "30 seconds"
    assert schema_problems(monitor)
    del monitor["spec"]["selector"]
    assert any("'selector' is a required property" in problem for problem in schema_problems(monitor))


def test_chart_with_every_option_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    options = values_file(ALL_OPTIONS)
    docs = chart(options)
    kinds = sorted((doc["kind"], doc["metadata"]["name"]) for doc in docs)
    assert kinds == [
        ("ConfigMap", "authproxy-config"),
        ("Deployment", "authproxy"),
        ("Deployment", "authproxy-redis"),
        ("HorizontalPodAutoscaler", "authproxy"),
        ("Ingress", "authproxy"),
        ("NetworkPolicy", "authproxy"),
        ("NetworkPolicy", "authproxy-redis"),
        ("PodDisruptionBudget", "authproxy"),
        ("Secret", "authproxy-secrets"),
        ("Service", "authproxy"),
        ("Service", "authproxy-metrics"),
        ("Service", "authproxy-redis"),
        ("ServiceMonitor", "authproxy"),
    ]
    deployment = find(docs, "Deployment", "authproxy")
    assert_hardened(deployment)
    config = valid_config(docs, deployment, tmp_path, monkeypatch, capsys)
    assert_authproxy_pod(docs, deployment, config)

    budget = find(docs, "PodDisruptionBudget")
    assert budget["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": deployment["spec"]["selector"]["matchLabels"]},
    }
    assert_autoscaled(docs, options["autoscaling"])
    assert_service_monitor_scrapes_the_metrics_listener(docs, config)


def assert_autoscaled(docs: list[dict[str, Any]], autoscaling: dict[str, Any]) -> None:
    """The HPA scales the proxy's Deployment on CPU, and the Deployment leaves the count to it."""
    deployment = proxy_deployment(docs)
    assert "replicas" not in deployment["spec"], "a fixed replicas would undo the autoscaler on every upgrade"
    autoscaler = find(docs, "HorizontalPodAutoscaler")
    spec = autoscaler["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"],
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (spec["minReplicas"], spec["maxReplicas"]) == (
        autoscaling["minReplicas"],
        autoscaling["maxReplicas"],
    )
    target = autoscaling.get("targetCPUUtilizationPercentage", 70)
    assert spec["metrics"] == [
        {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": target}},
        }
    ]
    # Utilization is a share of the request: without one the autoscaler has nothing to measure.
    assert container(deployment, "authproxy")["resources"]["requests"]["cpu"]
    assert spec.get("behavior", {}) == (autoscaling.get("behavior") or {})


def assert_service_monitor_scrapes_the_metrics_listener(docs: list[dict[str, Any]], config: Config) -> None:
    """ServiceMonitor -> Service -> container port -> the port `metrics_listen` binds, in one namespace."""
    deployment = proxy_deployment(docs)
    monitor = find(docs, "ServiceMonitor")
    wanted = monitor["spec"]["selector"]["matchLabels"].items()
    services = [
        doc for doc in docs if doc["kind"] == "Service" and wanted <= doc["metadata"]["labels"].items()
    ]
    assert [service["metadata"]["name"] for service in services] == ["authproxy-metrics"]
    (service,) = services
    assert selects(service["spec"]["selector"], deployment)
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["default"]}  # the release's namespace
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    (port,) = (port for port in service["spec"]["ports"] if port["name"] == endpoint["port"])
    ports = {port["name"]: port["containerPort"] for port in container(deployment, "authproxy")["ports"]}
    assert ports[port["targetPort"]] == split_host_port(config.server.metrics_listen)[1]
    assert split_host_port(config.server.metrics_listen)[0] not in ("127.0.0.1", "localhost", "::1")
    # Prometheus refuses a scrape timeout longer than the interval.
    assert seconds(endpoint["scrapeTimeout"]) <= seconds(endpoint["interval"])
    # The proxy's own Service (the one the ingress uses) never exposes the metrics port.
    main = find(docs, "Service", "authproxy")
    assert [port["targetPort"] for port in main["spec"]["ports"]] == ["http"]


def seconds(duration: str) -> int:
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(int(number) * units[unit] for number, unit in re.findall(r"(\d+)([hms])", duration))


def test_autoscaling_takes_the_replica_count_from_the_deployment() -> None:
    fixed = find(chart({"replicaCount": 4}), "Deployment", "authproxy")
    assert fixed["spec"]["replicas"] == 4
    autoscaling = {"enabled": True, "minReplicas": 4, "maxReplicas": 9, "targetCPUUtilizationPercentage": 80}
    docs = chart({"replicaCount": 4, "autoscaling": autoscaling})
    assert_autoscaled(docs, autoscaling)
    # The default budget (minAvailable 2) still lets a drain evict a Pod at the autoscaler's minimum.
    assert find(docs, "PodDisruptionBudget")["spec"]["minAvailable"] < autoscaling["minReplicas"]
    notes = render_chart(CHART, {**CHART_SECRETS, "autoscaling": autoscaling})[
        "authproxy/templates/NOTES.txt"
    ]
    assert "4 to 9 replicas, autoscaled on CPU" in notes
    assert not [doc for doc in chart() if doc["kind"] in ("HorizontalPodAutoscaler", "ServiceMonitor")]


def egress_rules(policy: dict[str, Any], port: int, protocol: str = "TCP") -> list[dict[str, Any]]:
    """The egress rules of `policy` that let `port`/`protocol` out (a rule without ports allows any)."""
    rules: list[dict[str, Any]] = policy["spec"]["egress"]
    return [
        rule
        for rule in rules
        if "ports" not in rule
        or any(
            entry.get("port") == port and entry.get("protocol", "TCP") == protocol for entry in rule["ports"]
        )
    ]


def ingress_rule(policy: dict[str, Any], port_name: str) -> dict[str, Any]:
    rules: list[dict[str, Any]] = policy["spec"]["ingress"]
    (rule,) = (
        rule for rule in rules if any(entry.get("port") == port_name for entry in rule.get("ports", []))
    )
    return rule


def assert_network_policy_allows_what_the_config_needs(docs: list[dict[str, Any]], config: Config) -> None:
    """DNS, CentralAuth, every upstream, and Redis (each sentinel too) can be reached."""
    deployment = proxy_deployment(docs)
    policy = find(docs, "NetworkPolicy", deployment["metadata"]["name"])
    assert selects(policy["spec"]["podSelector"]["matchLabels"], deployment)
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert all("ports" in rule for rule in policy["spec"]["egress"]), "no rule may open every port"
    for protocol in ("UDP", "TCP"):
        assert egress_rules(policy, 53, protocol), f"no DNS over {protocol}: no name would resolve"
    centralauth = urlsplit(config.centralauth.base_url)
    assert egress_rules(policy, centralauth.port or 443), "CentralAuth unreachable"
    for upstream in config.upstreams:
        url = urlsplit(upstream.url)
        assert egress_rules(policy, url.port or (443 if url.scheme == "https" else 80)), upstream.url
    if config.session.store == "redis":
        redis_ports = [port for _host, port in map(split_host_port, config.session.redis_sentinels)]
        if not config.session.redis_sentinels:
            redis_ports.append(urlsplit(config.session.redis_url).port or 6379)
        for port in redis_ports:
            assert egress_rules(policy, port), f"Redis port {port} unreachable"
    assert ingress_rule(policy, "http")["ports"] == [{"port": "http", "protocol": "TCP"}]


def test_network_policy_with_every_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    options = values_file(ALL_OPTIONS)["networkPolicy"]
    docs = chart(values_file(ALL_OPTIONS))
    config = valid_config(docs, proxy_deployment(docs), tmp_path, monkeypatch, capsys)
    assert_network_policy_allows_what_the_config_needs(docs, config)
    policy = find(docs, "NetworkPolicy", "authproxy")
    assert ingress_rule(policy, "http")["from"] == options["ingressFrom"]
    assert ingress_rule(policy, "metrics")["from"] == options["metricsFrom"]
    assert [rule["to"] for rule in egress_rules(policy, 53, "UDP")] == [options["dnsTo"]]
    (centralauth,) = egress_rules(policy, 443)
    assert centralauth["to"] == [{"ipBlock": {"cidr": cidr}} for cidr in options["centralauthCIDRs"]]
    assert [rule["to"] for rule in egress_rules(policy, 8443)] == [options["upstreamTo"]]
    (redis_rule,) = egress_rules(policy, 6379)
    (redis_peer,) = redis_rule["to"]
    assert selects(redis_peer["podSelector"]["matchLabels"], find(docs, "Deployment", "authproxy-redis"))
    assert policy["spec"]["egress"][-1] == options["extraEgress"][0]


def test_network_policy_defaults_open_the_proxy_port_and_shut_the_metrics_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = chart({"networkPolicy": {"enabled": True}})
    config = valid_config(docs, proxy_deployment(docs), tmp_path, monkeypatch, capsys)
    assert_network_policy_allows_what_the_config_needs(docs, config)
    policy = find(docs, "NetworkPolicy", "authproxy")
    assert "from" not in ingress_rule(policy, "http"), "the proxy port is open to every client by default"
    assert ingress_rule(policy, "metrics")["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    # Without peers, a rule opens its ports to every address: DNS, CentralAuth and the upstream do.
    assert all("to" not in rule for port in (53, 443, 8080) for rule in egress_rules(policy, port))
    # Without a metrics listener, or without peers for it, the metrics port is closed.
    for overrides in (
        {"config": {"server": {"metrics_listen": None}}},
        {"networkPolicy": {"enabled": True, "metricsFrom": []}},
    ):
        closed = find(chart({"networkPolicy": {"enabled": True}, **overrides}), "NetworkPolicy", "authproxy")
        assert [rule["ports"][0]["port"] for rule in closed["spec"]["ingress"]] == ["http"]


@pytest.mark.parametrize("tls", [False, True], ids=["redis", "rediss"])
def test_sentinel_example(
    tls: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides: dict[str, Any] = {"networkPolicy": {"enabled": True}}
    if tls:  # the TLS variant its comments describe: a CA bundle from a Secret of one's own
        overrides |= {
            "config": {
                "session": {"redis_url": "rediss://sentinel/0", "redis_ca_file": "/etc/redis-ca/ca.crt"}
            },
            "extraVolumes": [{"name": "redis-ca", "secret": {"secretName": "redis-ca"}}],
            "extraVolumeMounts": [{"name": "redis-ca", "mountPath": "/etc/redis-ca", "readOnly": True}],
        }
    docs = sentinel_docs(overrides)
    if tls:
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "redis-ca"},
                "stringData": {"ca.crt": "PEM"},
            }
        )
    assert not [doc for doc in docs if doc["metadata"]["name"].endswith("-redis")], "no bundled Redis"
    deployment = proxy_deployment(docs)
    config = valid_config(docs, deployment, tmp_path, monkeypatch, capsys)
    assert_authproxy_pod(docs, deployment, config)
    session = config.session
    assert session.store == "redis"
    assert session.redis_sentinel_master == "mymaster"
    assert len(session.redis_sentinels) == 3
    assert {split_host_port(sentinel)[1] for sentinel in session.redis_sentinels} == {26379}
    # redis_password_file names the mounted key of the Secret, and authproxy read the password from it.
    assert session.redis_password.get_secret_value() == "s3ntinel-redis-password"
    assert session.redis_password_file is not None
    assert session.redis_password_file.name == "password"
    pod = deployment["spec"]["template"]["spec"]
    (volume,) = (
        volume
        for volume in pod["volumes"]
        if volume.get("secret", {}).get("secretName") == "redis-credentials"
    )
    assert volume["secret"]["defaultMode"] == 0o440
    (mount,) = (
        mount
        for mount in container(deployment, "authproxy")["volumeMounts"]
        if mount["name"] == volume["name"]
    )
    assert mount["readOnly"] is True
    toml = tomllib.loads(find(docs, "ConfigMap")["data"]["config.toml"])
    assert toml["session"]["redis_password_file"] == f"{mount['mountPath']}/password"
    assert "redis_password" not in toml["session"], "no secret in the ConfigMap"
    if tls:
        assert urlsplit(session.redis_url).scheme == "rediss"
        assert session.redis_ca_file
    assert_network_policy_allows_what_the_config_needs(docs, config)
    policy = find(docs, "NetworkPolicy", "authproxy")
    (redis_rule,) = egress_rules(policy, 26379)
    assert redis_rule == egress_rules(policy, 6379)[0], "the sentinels and the master they name, in one rule"
    assert [problem for doc in docs for problem in schema_problems(doc)] == []


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
