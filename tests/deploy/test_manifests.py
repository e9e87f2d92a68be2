"""deploy/: every manifest validates offline against the Kubernetes schemas, and every image,
port, probe path, command line and config key agrees with the code that will run it.

The numbers are read from the code (argparse parsers, config dataclasses, pyproject, the
Makefile), never restated here; the listener's ConfigMap is loaded by the real
``load_config`` with the Secret's files materialised beside it, and the probe paths and the
HPA's metric are checked against a real Triton server.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import posixpath
import re
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import tomllib
import yaml

from lasan.build.serve import ALL_INTERFACES, find_triton
from lasan.cli import COMMANDS
from lasan.integration.config import client_ssl_context, load_config, server_ssl_context

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes release still in upstream support when this was written
LIBPQ_VARIABLES = {"PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGSSLMODE", "PGSSLROOTCERT"}


def _load(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


KUSTOMIZATION = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
RESOURCES = [doc for name in KUSTOMIZATION["resources"] for doc in _load(name)]
SECRETS = _load("secrets.example.yaml")
ALL_DOCS = RESOURCES + SECRETS
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in ALL_DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _pod(deployment: str) -> dict[str, Any]:
    return _one("Deployment", deployment)["spec"]["template"]["spec"]


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod.get("initContainers", []) + pod["containers"] if c["name"] == name)


def _ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def _parse(container: dict[str, Any]) -> tuple[str, argparse.Namespace]:
    """The container's ``lasan`` command line, parsed by that subcommand's real parser."""
    command, *rest = container["args"]
    assert command in COMMANDS, f"{container['name']}: 'lasan {command}' is not a lasan subcommand"
    parser = argparse.ArgumentParser(prog=f"lasan {command}")
    importlib.import_module(COMMANDS[command][0]).configure(parser)
    try:
        return command, parser.parse_args(rest)
    except SystemExit as exc:  # argparse exits on unknown or missing options
        raise AssertionError(f"{container['name']}: lasan {' '.join(container['args'])} is refused by its parser") from exc


def _mount_for(pod: dict[str, Any], container: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    """The volume that holds ``path`` inside ``container`` and the path relative to its mount."""
    mounts = sorted(container["volumeMounts"], key=lambda m: len(m["mountPath"]), reverse=True)
    path = posixpath.normpath(path)
    for m in mounts:
        if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/"):
            volume = next(v for v in pod["volumes"] if v["name"] == m["name"])
            return volume, posixpath.relpath(path, m["mountPath"])
    raise AssertionError(f"{container['name']}: nothing is mounted at {path}")


# -- schemas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", ALL_DOCS, ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_manifest_validates_offline_against_the_kubernetes_schema(doc, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("kubernetes-validate tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_does_reject_a_broken_manifest():
    broken = copy.deepcopy(_one("Deployment", "lasan-listener"))
    broken["spec"]["template"]["spec"]["containers"][0]["prots"] = broken["spec"]["template"]["spec"]["containers"][0].pop("ports")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest_and_names_the_image_of_this_version():
    listed = set(KUSTOMIZATION["resources"])
    not_resources = {"kustomization.yaml", "secrets.example.yaml", "prometheus-adapter-values.yaml"}
    on_disk = {p.name for p in DEPLOY.glob("*.yaml")} - not_resources
    assert listed == on_disk
    project = PYPROJECT["project"]
    (image,) = KUSTOMIZATION["images"]
    assert image["name"] == project["name"] and image["newTag"] == project["version"]
    for doc in RESOURCES:
        if doc["kind"] == "Deployment":
            pod = doc["spec"]["template"]["spec"]
            for c in pod.get("initContainers", []) + pod["containers"]:
                assert c["image"] == f"{project['name']}:{project['version']}", c["name"]


# -- Triton ----------------------------------------------------------------------------------


def test_triton_pod_builds_the_repository_it_serves_and_probes_its_http_port():
    pod = _pod("lasan-triton")
    build, serve = _container(pod, "build-repository"), _container(pod, "triton")
    b_cmd, b = _parse(build)
    s_cmd, s = _parse(serve)
    assert (b_cmd, s_cmd) == ("build", "serve")
    assert Path(b.out) == Path(s.repo)
    # The checkpoint comes from its claim; the repository goes through one shared emptyDir.
    assert _mount_for(pod, build, b.checkpoint)[0]["persistentVolumeClaim"]["claimName"] == "lasan-checkpoint"
    assert _mount_for(pod, build, b.out)[0]["name"] == _mount_for(pod, serve, s.repo)[0]["name"]
    assert "emptyDir" in _mount_for(pod, serve, s.repo)[0]
    assert s.host == ALL_INTERFACES, "Triton must listen beyond loopback inside its pod"
    ports = _ports(serve)
    assert ports == {"http": s.http_port, "grpc": s.grpc_port, "metrics": s.metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert serve[probe]["httpGet"]["port"] == "http"
    assert serve["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert serve["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert _mount_for(pod, serve, "/dev/shm")[0]["emptyDir"]["medium"] == "Memory"
    service = _one("Service", "lasan-triton")
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {n: n for n in ports}
    assert {p["port"] for p in service["spec"]["ports"]} == set(ports.values())


def test_hpa_scales_triton_on_the_adapter_rule_for_triton_queue_time():
    hpa = _one("HorizontalPodAutoscaler", "lasan-triton")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "lasan-triton"}
    (metric,) = hpa["metrics"]
    rules = yaml.safe_load((DEPLOY / "prometheus-adapter-values.yaml").read_text())["rules"]["custom"]
    (rule,) = rules
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert rule["name"]["matches"] == "nv_inference_queue_duration_us"
    assert rule["seriesQuery"].startswith(rule["name"]["matches"] + "{")
    assert 'namespace="' + KUSTOMIZATION["namespace"] + '"' in rule["seriesQuery"]
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]


@pytest.mark.slow
def test_probe_paths_and_hpa_metrics_exist_on_a_real_triton(triton_server):
    serve = _container(_pod("lasan-triton"), "triton")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        with urllib.request.urlopen(triton_server.http_url + serve[probe]["httpGet"]["path"], timeout=10) as resp:
            assert resp.status == 200
    with urllib.request.urlopen(triton_server.metrics_url, timeout=10) as resp:
        exposed = set(re.findall(r"^(\w+)\{", resp.read().decode(), re.MULTILINE))
    query = yaml.safe_load((DEPLOY / "prometheus-adapter-values.yaml").read_text())["rules"]["custom"][0]["metricsQuery"]
    used = set(re.findall(r"\b(nv_\w+)\{", query))
    assert used and used <= exposed, f"the adapter rule reads {used - exposed}, which Triton does not expose"


# -- listener --------------------------------------------------------------------------------


def _self_signed(folder: Path, name: str) -> tuple[bytes, bytes]:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
                    "-keyout", str(folder / f"{name}.key"), "-out", str(folder / f"{name}.crt")],
                   check=True, capture_output=True)
    return (folder / f"{name}.crt").read_bytes(), (folder / f"{name}.key").read_bytes()


@pytest.fixture(scope="module")
def listener_tree(tmp_path_factory) -> tuple[Path, Any]:
    """The listener's ConfigMap and TLS Secret materialised where the pod mounts them, under tmp."""
    root = tmp_path_factory.mktemp("pod")
    pod = _pod("lasan-listener")
    container = _container(pod, "listener")
    _, args = _parse(container)
    volume, key = _mount_for(pod, container, args.config)
    config_map = _one("ConfigMap", volume["configMap"]["name"])
    target = root / args.config.lstrip("/")
    target.parent.mkdir(parents=True)
    target.write_text(config_map["data"][key])
    tls_volume = next(v for v in pod["volumes"] if "secret" in v)
    mount = next(m for m in container["volumeMounts"] if m["name"] == tls_volume["name"])
    secret = _one("Secret", tls_volume["secret"]["secretName"])
    tls_dir = root / mount["mountPath"].lstrip("/")
    tls_dir.mkdir(parents=True)
    crt, key_pem = _self_signed(root, "server")
    ca, _ = _self_signed(root, "ca")
    real = {"tls.crt": crt, "tls.key": key_pem, "ca.crt": ca}
    assert set(secret["stringData"]) == set(real)
    for name, content in real.items():
        (tls_dir / name).write_bytes(content)
    return target, load_config(target)


def test_listener_configmap_is_a_valid_listen_config_using_the_tls_secret(listener_tree):
    path, cfg = listener_tree
    assert cfg.listener.tls is not None and cfg.listener.tls.require_client_cert
    server_ssl_context(cfg.listener.tls)  # the real certificate files load
    assert cfg.downstream is not None and cfg.downstream.tls is not None
    client_ssl_context(cfg.downstream.tls)
    assert cfg.listener.host == cfg.dicom.host == cfg.metrics.host == "0.0.0.0"
    assert not cfg.watch.enabled  # a watch folder belongs to one machine
    assert cfg.storage.queue_url is not None and cfg.storage.queue_url.startswith("postgresql://")
    assert "@" not in cfg.storage.queue_url, "no credentials in the ConfigMap"


def test_listener_ports_services_and_network_policies_match_its_config(listener_tree):
    _, cfg = listener_tree
    pod = _pod("lasan-listener")
    container = _container(pod, "listener")
    ports = _ports(container)
    assert ports == {"mllp": cfg.listener.port, "dicom": cfg.dicom.port, "metrics": cfg.metrics.port}
    assert container["readinessProbe"]["tcpSocket"]["port"] == "mllp"
    assert container["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    public = _one("Service", "lasan-listener")["spec"]
    assert {p["targetPort"] for p in public["ports"]} == {"mllp", "dicom"}  # metrics stay inside the cluster
    assert public["externalTrafficPolicy"] == "Local"  # the NetworkPolicy's ipBlock sees the client address
    assert {p["port"] for p in public["ports"]} == {cfg.listener.port, cfg.dicom.port}
    engine = _one("NetworkPolicy", "lasan-listener-from-interface-engine")["spec"]
    assert engine["podSelector"]["matchLabels"] == _one("Deployment", "lasan-listener")["spec"]["selector"]["matchLabels"]
    (rule,) = engine["ingress"]
    assert {p["port"] for p in rule["ports"]} == {cfg.listener.port, cfg.dicom.port}
    monitoring = _one("NetworkPolicy", "lasan-listener-metrics-from-monitoring")["spec"]
    assert {p["port"] for r in monitoring["ingress"] for p in r["ports"]} == {cfg.metrics.port}
    deny = _one("NetworkPolicy", "lasan-default-deny-ingress")["spec"]
    assert deny["podSelector"] == {} and "ingress" not in deny


def test_listener_reaches_triton_through_its_service_and_the_policy_allows_only_that(listener_tree):
    _, cfg = listener_tree
    service = _one("Service", "lasan-triton")
    grpc = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert cfg.triton.urls == (f"{service['metadata']['name']}:{grpc}",)
    policy = _one("NetworkPolicy", "lasan-triton-from-listener")["spec"]
    from_listener = next(r for r in policy["ingress"] if "podSelector" in r["from"][0])
    assert from_listener["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "lasan-listener"}
    assert {p["port"] for p in from_listener["ports"]} == {grpc}


def test_postgres_secret_feeds_libpq_through_the_environment():
    container = _container(_pod("lasan-listener"), "listener")
    (source,) = container["envFrom"]
    secret = _one("Secret", source["secretRef"]["name"])
    assert set(secret["stringData"]) <= LIBPQ_VARIABLES and {"PGHOST", "PGPASSWORD"} <= set(secret["stringData"])
    assert secret["stringData"]["PGSSLMODE"] == "verify-full"


# -- image -----------------------------------------------------------------------------------


def test_dockerfile_installs_this_project_as_the_makefile_does():
    text = (DEPLOY / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\S+) \1$", text, re.MULTILINE))
    assert copied == set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())
    torch_pin = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("torch"))
    assert f"pip install {torch_pin} " in text
    makefile = (ROOT / "Makefile").read_text()
    pytriton = re.search(r"nvidia-pytriton==[\d.]+", makefile).group(0)
    assert f"--no-deps {pytriton}" in text
    extras = re.search(r'pip install "\.\[([\w,]+)\]"', text).group(1).split(",")
    assert set(extras) <= set(PYPROJECT["project"]["optional-dependencies"])
    assert re.search(r'^ENTRYPOINT \["(\w+)"\]', text, re.MULTILINE).group(1) in PYPROJECT["project"]["scripts"]
    exposed = {int(p) for p in re.search(r"^EXPOSE ([\d ]+)$", text, re.MULTILINE).group(1).split()}
    for deployment in ("lasan-listener", "lasan-triton"):
        pod = _pod(deployment)
        for c in pod["containers"]:
            assert set(_ports(c).values()) <= exposed, c["name"]
    # The embedded Triton has a python-backend stub for the image's Python.
    python = re.search(r"^FROM python:(\d+\.\d+)", text, re.MULTILINE).group(1)
    assert (find_triton().stub.parents[1] / python / "triton_python_backend_stub").is_file()
    user = int(re.search(r"^USER (\d+)$", text, re.MULTILINE).group(1))
    for deployment in ("lasan-listener", "lasan-triton"):
        assert _pod(deployment)["securityContext"]["runAsUser"] == user
