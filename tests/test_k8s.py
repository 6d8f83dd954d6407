"""The Kubernetes manifests (k8s/) as rendered by `kubectl kustomize`: schemas, invariants, scanner.

Every overlay is rendered on this machine, every built-in kind validated strictly against the
Kubernetes 1.30 and 1.33 schemas (kubernetes-validate, offline), every custom resource against its
CRD's schema as vendored in k8s/crds/ (versions in k8s/crds/SOURCES.md). The invariants are the ones
docs/DEPLOY.md promises; the one server test checks that the autoscaler's metrics exist.

    .venv/bin/python -m pytest -q tests/test_k8s.py
    make k8s-check    # the same, plus checkov (installed into .cache/checkov-venv)
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
OVERLAYS = ("cpu", "gpu", "hpa")
KUBERNETES_VERSIONS = ("1.30.0", "1.33.0")
CRDS = {("keda.sh", "ScaledObject"): K8S / "crds" / "keda.sh_scaledobjects.yaml",
        ("monitoring.coreos.com", "ServiceMonitor"): K8S / "crds" / "monitoring.coreos.com_servicemonitors.yaml"}
CHECKOV = Path(os.environ.get("ATELIER_CHECKOV", ROOT / ".cache" / "checkov-venv" / "bin" / "checkov"))
METRIC_NAME = re.compile(r"\batelier_[a-z0-9_]+")


@cache
def render(overlay: str) -> tuple[dict, ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the manifests cannot be rendered here")
    result = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def of_kind(docs, kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs, kind: str, name: str = "atelier") -> dict:
    [found] = [doc for doc in of_kind(docs, kind) if doc["metadata"]["name"] == name]
    return found


def pod_labels(docs) -> dict[str, str]:
    return one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels only, as the manifests use) that selects `labels`."""
    assert set(selector) <= {"matchLabels"}, f"unexpected selector form {selector}"
    return bool(selector["matchLabels"]) and selector["matchLabels"].items() <= labels.items()


def config(docs) -> dict[str, str]:
    [config_map] = of_kind(docs, "ConfigMap")
    return config_map["data"]


def containers(docs) -> list[dict]:
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec["containers"] + spec.get("initContainers", [])


# ---------------------------------------------------------------------------------------- schemas

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_renders_the_full_set_of_objects(overlay):
    kinds = sorted(doc["kind"] for doc in render(overlay))
    autoscaler = "HorizontalPodAutoscaler" if overlay == "hpa" else "ScaledObject"
    assert kinds == sorted(["Namespace", "ServiceAccount", "ConfigMap", "Service", "Service", "Deployment",
                            "PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor", autoscaler])
    assert {doc["metadata"].get("namespace") for doc in render(overlay) if doc["kind"] != "Namespace"} == {"atelier"}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builtin_kinds_validate_strictly_against_the_kubernetes_schema(overlay, version):
    builtin = [doc for doc in render(overlay) if (doc["apiVersion"].split("/")[0], doc["kind"]) not in CRDS]
    assert len(builtin) >= 8
    for doc in builtin:
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_rejects_a_misspelt_field():
    deployment = copy.deepcopy(one(render("cpu"), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"port": 3000}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


@cache
def crd_schema(group: str, kind: str, version: str) -> dict:
    crd = yaml.safe_load(CRDS[(group, kind)].read_text())
    [served] = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return closed(served["schema"]["openAPIV3Schema"])


def closed(schema: dict) -> dict:
    """The CRD schema with unknown fields refused, as `kubectl apply` (server-side field validation,
    Strict) refuses them, instead of pruning them silently. `metadata` stays open: the API server checks it."""
    schema = dict(schema)
    if "properties" in schema:
        schema["properties"] = {name: (sub if name == "metadata" else closed(sub))
                                for name, sub in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            schema[key] = closed(schema[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in schema:
            schema[key] = [closed(sub) for sub in schema[key]]
    return schema


def validate_custom_resource(doc: dict) -> None:
    group, version = doc["apiVersion"].split("/")
    jsonschema.validate(doc, crd_schema(group, doc["kind"], version))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_match_their_crd_schema(overlay):
    custom = [doc for doc in render(overlay) if (doc["apiVersion"].split("/")[0], doc["kind"]) in CRDS]
    assert {doc["kind"] for doc in custom} == ({"ServiceMonitor"} if overlay == "hpa" else {"ServiceMonitor", "ScaledObject"})
    for doc in custom:
        validate_custom_resource(doc)


def test_crd_validation_rejects_a_misspelt_field_and_a_non_string_trigger_setting():
    scaled = copy.deepcopy(one(render("cpu"), "ScaledObject"))
    scaled["spec"]["minReplicas"] = 2
    with pytest.raises(jsonschema.ValidationError):
        validate_custom_resource(scaled)
    scaled = copy.deepcopy(one(render("cpu"), "ScaledObject"))
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 0.4
    with pytest.raises(jsonschema.ValidationError):
        validate_custom_resource(scaled)


# ------------------------------------------------------------------------------------- invariants

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_limits_probes_and_a_locked_down_security_context(overlay):
    docs = render(overlay)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    writable = {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume}
    for container in containers(docs):
        resources = container["resources"]
        for kind in ("cpu", "memory"):
            assert kind in resources["requests"] and kind in resources["limits"], (container["name"], kind)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["port"] == "http", probe
        assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "too short for model verification"
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security.get("privileged", False) is False
        assert security["capabilities"]["drop"] == ["ALL"] and not security["capabilities"].get("add")
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        env = {item["name"]: item.get("value") for item in container["env"]}
        # the only paths BentoML writes to, both emptyDirs: its home (Prometheus multiprocess files) and /tmp
        assert mounts[env["BENTOML_HOME"]] in writable and mounts["/tmp"] in writable


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_ports_match_the_container_ports(overlay):
    docs = render(overlay)
    [container] = containers(docs)
    by_name = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert by_name == {"http": 3000, "grpc": int(config(docs)["ATELIER_GRPC_PORT"])}
    for service in of_kind(docs, "Service"):
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in by_name, (service["metadata"]["name"], port)
            assert port["port"] == by_name[port["targetPort"]] and port["name"] == port["targetPort"]
            assert port["appProtocol"] == {"http": "http", "grpc": "kubernetes.io/h2c"}[port["name"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_pdb_networkpolicy_monitor_and_autoscaler_select_the_deployment_pods(overlay):
    docs = render(overlay)
    deployment, labels = one(docs, "Deployment"), pod_labels(docs)
    assert selects(deployment["spec"]["selector"], labels)
    for service in of_kind(docs, "Service"):
        assert service["spec"]["selector"].items() <= labels.items()
    assert selects(one(docs, "PodDisruptionBudget")["spec"]["selector"], labels)
    policy = one(docs, "NetworkPolicy")["spec"]
    assert selects(policy["podSelector"], labels)
    # the monitoring namespace reaches /metrics, which is served on the http port
    assert any(rule["ports"] == [{"port": "http", "protocol": "TCP"}]
               and rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
               for rule in policy["ingress"])
    assert {port["port"] for rule in policy["ingress"] for port in rule["ports"]} == {"http", "grpc"}
    monitor = one(docs, "ServiceMonitor")["spec"]
    scraped = [s for s in of_kind(docs, "Service") if selects(monitor["selector"], s["metadata"]["labels"])]
    assert [s["metadata"]["name"] for s in scraped] == ["atelier"], "each pod must be scraped once"
    assert monitor["namespaceSelector"]["matchNames"] == [deployment["metadata"]["namespace"]]
    assert [endpoint["port"] for endpoint in monitor["endpoints"]] == ["http"]
    kind = "HorizontalPodAutoscaler" if overlay == "hpa" else "ScaledObject"
    target = one(docs, kind)["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", "atelier")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gpu_overlay_requests_a_gpu_and_schedules_onto_gpu_nodes(overlay):
    docs = render(overlay)
    [container] = containers(docs)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    if overlay == "gpu":
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert config(docs)["ATELIER_PROVIDERS"] == "cuda,cpu" and config(docs)["ATELIER_FP16"] == "auto"
        assert container["image"].split("/")[-1].startswith("atelier-gpu:")
    else:
        assert not any("gpu" in key for part in container["resources"].values() for key in part)
        assert "nodeSelector" not in pod and "tolerations" not in pod
        assert config(docs)["ATELIER_PROVIDERS"] == "cpu"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_outlasts_the_prestop_sleep_plus_the_drain(overlay):
    docs = render(overlay)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    [container] = containers(docs)
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(config(docs)["ATELIER_DRAIN_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_sets_the_admission_budget_and_batching_for_its_hardware(overlay):
    docs = render(overlay)
    settings = config(docs)
    for variable in ("ATELIER_MAX_QUEUE_SECONDS", "ATELIER_MAX_INFLIGHT", "ATELIER_MAX_BATCH", "ATELIER_GATHER_MS",
                     "ATELIER_DRAIN_SECONDS", "ATELIER_PROVIDERS", "ATELIER_INTRA_OP_THREADS"):
        assert settings.get(variable, "") != "", variable
    [container] = containers(docs)
    assert [source["configMapRef"]["name"] for source in container["envFrom"]] == [of_kind(docs, "ConfigMap")[0]["metadata"]["name"]]
    # onnxruntime's threads match the cores the pod may use
    assert int(settings["ATELIER_INTRA_OP_THREADS"]) == int(container["resources"]["limits"]["cpu"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_image_is_pinned_by_tag_or_digest_never_latest(overlay):
    [container] = containers(render(overlay))
    image = container["image"]
    name, _, tag = image.rpartition(":")
    assert "@sha256:" in image or (name and re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", tag)), image
    assert not image.endswith(":latest")


def autoscaler_queries(docs) -> list[str]:
    scaled = of_kind(docs, "ScaledObject")
    return [trigger["metadata"]["query"] for so in scaled for trigger in so["spec"]["triggers"]]


def test_autoscalers_scale_on_queued_work_not_utilisation():
    for overlay in ("cpu", "gpu"):
        triggers = one(render(overlay), "ScaledObject")["spec"]["triggers"]
        assert [t["type"] for t in triggers] == ["prometheus", "prometheus"]
        assert [t["metricType"] for t in triggers] == ["AverageValue", "AverageValue"]
        assert {name for t in triggers for name in METRIC_NAME.findall(t["metadata"]["query"])} == {
            "atelier_pending_work_seconds", "atelier_predicted_wait_seconds"}
        spec = one(render(overlay), "ScaledObject")["spec"]
        assert spec["fallback"]["replicas"] >= spec["minReplicaCount"] >= 2
    hpa = one(render("hpa"), "HorizontalPodAutoscaler")["spec"]
    assert [(m["type"], m["pods"]["metric"]["name"]) for m in hpa["metrics"]] == [
        ("Pods", "atelier_predicted_wait_seconds"), ("Pods", "atelier_pending_work_seconds")]


@pytest.mark.parametrize("overlay", ("cpu", "gpu"))
def test_autoscaler_queries_read_this_namespace_and_the_scraped_service(overlay):
    docs = render(overlay)
    for query in autoscaler_queries(docs):
        assert 'namespace="atelier"' in query and 'service="atelier"' in query, query


def test_hpa_targets_match_the_cpu_scaled_object():
    scaled = one(render("cpu"), "ScaledObject")["spec"]
    hpa = one(render("hpa"), "HorizontalPodAutoscaler")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (scaled["minReplicaCount"], scaled["maxReplicaCount"])
    assert hpa["behavior"] == scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    for metric, trigger in zip(hpa["metrics"], scaled["triggers"]):
        assert quantity(metric["pods"]["target"]["averageValue"]) == float(trigger["metadata"]["threshold"])


def quantity(value: str) -> float:
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def adapter_rules() -> list[dict]:
    values = yaml.safe_load((K8S / "overlays" / "hpa" / "prometheus-adapter-values.yaml").read_text())
    return values["rules"]["custom"]


def test_hpa_metrics_are_served_by_the_prometheus_adapter_rules():
    served = {rule["name"]["as"]: rule for rule in adapter_rules()}
    for metric in one(render("hpa"), "HorizontalPodAutoscaler")["spec"]["metrics"]:
        rule = served[metric["pods"]["metric"]["name"]]
        assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        assert METRIC_NAME.findall(rule["seriesQuery"]) == [metric["pods"]["metric"]["name"]]


def queried_metric_names() -> set[str]:
    names = set()
    for overlay in ("cpu", "gpu"):
        names.update(name for query in autoscaler_queries(render(overlay)) for name in METRIC_NAME.findall(query))
    names.update(metric["pods"]["metric"]["name"] for metric in one(render("hpa"), "HorizontalPodAutoscaler")["spec"]["metrics"])
    for rule in adapter_rules():
        names.update(METRIC_NAME.findall(rule["seriesQuery"] + rule["metricsQuery"]))
    return names


@pytest.mark.server
def test_every_metric_the_autoscaler_queries_is_exported_by_the_real_server():
    from harness.serving import AtelierServer

    names = queried_metric_names()
    assert names == {"atelier_pending_work_seconds", "atelier_predicted_wait_seconds"}
    with AtelierServer() as server:
        exported = {line.split("{")[0].split(" ")[0] for line in server.metrics().split("\n")
                    if line and not line.startswith("#")}
    assert names <= exported, f"not on /metrics: {sorted(names - exported)}"


# -------------------------------------------------------------------------------------- scanner

def checkov_failures(overlay: str, tmp_path: Path) -> list[dict]:
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(yaml.safe_dump_all(render(overlay)))
    result = subprocess.run([str(CHECKOV), "--quiet", "--compact", "--output", "json", "--framework", "kubernetes",
                             "--file", str(rendered)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"})
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout) if result.stdout.strip() else {}
    reports = report if isinstance(report, list) else [report]
    return [check for entry in reports for check in entry.get("results", {}).get("failed_checks", [])]


@pytest.mark.skipif(not CHECKOV.exists(), reason="checkov not installed: `make k8s-check` installs it in .cache/")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_checkov_finding_is_justified_in_deploy_md(overlay, tmp_path):
    justified = set(re.findall(r"^\| (CKV2?_K8S_\d+) \|", (ROOT / "docs" / "DEPLOY.md").read_text(), re.M))
    unjustified = sorted({(check["check_id"], check["check_name"]) for check in checkov_failures(overlay, tmp_path)
                          if check["check_id"] not in justified})
    assert not unjustified, f"checkov findings with no justification in docs/DEPLOY.md: {unjustified}"
