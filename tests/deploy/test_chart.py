"""The Helm chart, rendered offline with Helm's own Go SDK: lint, Kubernetes schemas, and the deployment's rules
(one GPU per pod, probes, drain, non-root read-only pods, load-based autoscaling, API key from a Secret)."""

from __future__ import annotations

import base64

import pytest
import yaml

from tests.deploy.chart import (CHART, DASHBOARD, FULLNAME, NAMESPACE, by_kind, container, default_values, env,
                                gpu_values, helm, manifests, merge, one, render)

# The chart's kubeVersion floor and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.26.0", "latest")

# Kinds from CRDs have no schema in kubernetes-validate: check the fields the chart sets against the CRDs' shapes.
CRD_SCHEMAS = {
    "ServiceMonitor": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "spec": {
                "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
                "properties": {
                    "selector": {"type": "object", "required": ["matchLabels"]},
                    "namespaceSelector": {"type": "object", "properties": {"matchNames": {"type": "array"}}},
                    "endpoints": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "required": ["port", "path"], "additionalProperties": False,
                        "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                                       "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                                       "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"}}}},
                },
            },
        },
    },
    "ScaledObject": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "spec": {
                "type": "object", "required": ["scaleTargetRef", "triggers"], "additionalProperties": False,
                "properties": {
                    "scaleTargetRef": {"type": "object", "required": ["name"]},
                    "minReplicaCount": {"type": "integer"}, "maxReplicaCount": {"type": "integer"},
                    "pollingInterval": {"type": "integer"}, "cooldownPeriod": {"type": "integer"},
                    "advanced": {"type": "object", "properties": {"horizontalPodAutoscalerConfig": {
                        "type": "object", "properties": {"behavior": {"type": "object"}}}}},
                    "triggers": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "required": ["type", "metadata"], "additionalProperties": False,
                        "properties": {
                            "type": {"const": "prometheus"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "metadata": {"type": "object", "required": ["serverAddress", "query", "threshold"],
                                         "additionalProperties": {"type": "string"}}}}},
                },
            },
        },
    },
}

SCENARIOS = {
    "default": {},
    # Ids avoid the bare word "gpu": tests/conftest.py skips items with that keyword on machines without CUDA.
    "cuda": gpu_values(),
    "cuda-keda": merge(gpu_values(), {"autoscaling": {"mode": "keda"}}),
    "api-key-and-volume": {
        "apiKey": {"value": "s3cret"}, "mamtra": {"corsOrigins": ["https://app.example"]},
        "model": {"volume": {"persistentVolumeClaim": {"claimName": "mamtra-model", "readOnly": True}}},
        "autoscaling": {"enabled": True, "metrics": ["queue"]},
    },
}


def _validate_k8s(doc: dict, version: str) -> None:
    import jsonschema
    import kubernetes_validate

    if doc["kind"] in CRD_SCHEMAS:
        jsonschema.validate(doc, CRD_SCHEMAS[doc["kind"]])
        return
    if version == "latest":
        version = kubernetes_validate.utils.latest_version()
    kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_is_clean(scenario):
    report = helm().lint(str(CHART), SCENARIOS[scenario], strict=True, namespace=NAMESPACE, kube_version="v1.26.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert problems == []


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_manifests_validate_against_kubernetes_schemas(scenario, version):
    docs = manifests(SCENARIOS[scenario])
    assert {"Deployment", "Service", "PodDisruptionBudget"} <= set(by_kind(docs))
    for doc in docs:
        _validate_k8s(doc, version)


def test_strict_validation_catches_a_misspelled_field():
    """The schema check above is real: a field Kubernetes does not know fails it."""
    import kubernetes_validate

    deployment = one(manifests(), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate_k8s(deployment, "1.26.0")


def test_rendered_manifests_pass_yamllint():
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    config = YamlLintConfig(file=str(CHART.parent / "tests" / "deploy" / "yamllint.yaml"))
    for scenario, values in SCENARIOS.items():
        for path, text in render(values).items():
            if path.endswith(".txt") or not text.strip():
                continue
            problems = [f"{path}:{p.line}: {p.desc}" for p in linter.run(text.strip() + "\n", config)
                        if p.level == "error"]
            assert problems == [], f"{scenario}: {problems}"


def test_default_is_a_cpu_pod_with_the_bundled_model():
    docs = manifests()
    kinds = by_kind(docs)
    assert "HorizontalPodAutoscaler" not in kinds and "Secret" not in kinds and "ServiceMonitor" not in kinds
    c, e = container(docs), env(docs)
    assert c["image"] == "mamtra:0.1.0"
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
    assert e["MAMTRA_DEVICE"]["value"] == "cpu"
    assert e["MAMTRA_HOST"]["value"] == "0.0.0.0"
    assert "MAMTRA_MODEL_DIR" not in e and "MAMTRA_API_KEY" not in e


def test_gpu_pod_takes_one_gpu_and_lands_on_gpu_nodes():
    docs = manifests(gpu_values())
    c, spec = container(docs), one(docs, "Deployment")["spec"]["template"]["spec"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["image"].endswith("-cuda")
    assert env(docs)["MAMTRA_DEVICE"]["value"] == "cuda"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    (spread,) = spec["topologySpreadConstraints"]
    assert spread["labelSelector"]["matchLabels"] == one(docs, "Deployment")["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("scenario, min_window_s", [("default", 180), ("cuda", 600)])
def test_probes_and_startup_window(scenario, min_window_s):
    c = container(manifests(SCENARIOS[scenario]))
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] == "http"
    window = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
    assert window >= min_window_s, "warm-up (and Triton compilation on GPU) needs a long startup window"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_grace_period_covers_prestop_and_drain(scenario):
    docs = manifests(SCENARIOS[scenario])
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    drain = float(env(docs)["MAMTRA_DRAIN_TIMEOUT_S"]["value"])
    sleep = int(container(docs)["lifecycle"]["preStop"]["exec"]["command"][1])
    assert spec["terminationGracePeriodSeconds"] > drain + sleep


def test_render_refuses_a_grace_period_shorter_than_the_drain():
    with pytest.raises(Exception, match="terminationGracePeriodSeconds"):
        render({"terminationGracePeriodSeconds": 30, "mamtra": {"drainTimeoutS": 30}})


def test_render_refuses_values_outside_the_schema():
    with pytest.raises(Exception, match="autoscaling"):
        render({"autoscaling": {"metrics": ["cpu"]}})


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_pods_run_non_root_on_a_read_only_root_with_tmp_writable(scenario):
    docs = manifests(SCENARIOS[scenario])
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    tmp = next(m for m in c["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])
    assert pod["automountServiceAccountToken"] is False


def test_api_key_comes_from_a_chart_secret():
    docs = manifests(SCENARIOS["api-key-and-volume"])
    secret = one(docs, "Secret")
    ref = env(docs)["MAMTRA_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"]
    assert base64.b64decode(secret["data"][ref["key"]]).decode() == "s3cret"
    assert "s3cret" not in yaml.safe_dump(one(docs, "Deployment")), "the key must not leak into the pod spec"


def test_api_key_from_an_existing_secret():
    docs = manifests({"apiKey": {"existingSecret": "tts-keys", "secretKey": "key"}})
    assert "Secret" not in by_kind(docs)
    assert env(docs)["MAMTRA_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "tts-keys", "key": "key"}


def test_model_from_a_volume():
    docs = manifests(SCENARIOS["api-key-and-volume"])
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    mount = next(m for m in container(docs)["volumeMounts"] if m["name"] == "model")
    assert mount["readOnly"] is True
    assert env(docs)["MAMTRA_MODEL_DIR"]["value"] == mount["mountPath"]
    assert next(v for v in pod["volumes"] if v["name"] == "model")["persistentVolumeClaim"]["claimName"] == "mamtra-model"
    assert env(docs)["MAMTRA_CORS_ORIGINS"]["value"] == "https://app.example"


def test_hpa_scales_on_load_metrics_never_cpu():
    docs = manifests(gpu_values())
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert "replicas" not in one(docs, "Deployment")["spec"], "the HPA owns the replica count"
    assert hpa["spec"]["scaleTargetRef"]["name"] == FULLNAME
    assert {m["type"] for m in hpa["spec"]["metrics"]} == {"Pods"}
    targets = {m["pods"]["metric"]["name"]: m["pods"]["target"]["averageValue"] for m in hpa["spec"]["metrics"]}
    values = merge(default_values(), gpu_values())
    slots = int(values["mamtra"]["maxStreams"] * values["autoscaling"]["targetSlotUtilization"])
    assert targets == {"mamtra_state_slots_used": str(slots),
                       "mamtra_requests_waiting": str(values["autoscaling"]["targetQueuePerPod"])}
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60


def test_keda_mode_renders_a_scaled_object_instead_of_an_hpa():
    docs = manifests(SCENARIOS["cuda-keda"])
    kinds = by_kind(docs)
    assert "HorizontalPodAutoscaler" not in kinds
    (so,) = kinds["ScaledObject"]
    assert so["spec"]["scaleTargetRef"]["name"] == FULLNAME
    queries = [t["metadata"]["query"] for t in so["spec"]["triggers"]]
    selector = f'namespace="{NAMESPACE}",service="{FULLNAME}"'
    assert queries == [f"sum(mamtra_state_slots_used{{{selector}}})", f"sum(mamtra_requests_waiting{{{selector}}})"]


def test_service_monitor_scrapes_the_service_port():
    docs = manifests(gpu_values())
    sm, svc = one(docs, "ServiceMonitor"), one(docs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    # The KEDA queries select on the label Prometheus gives targets from the Service's name.
    assert svc["metadata"]["name"] == FULLNAME


def test_pdb_and_service_select_the_deployments_pods():
    docs = manifests()
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    for kind, selector in (("PodDisruptionBudget", lambda d: d["spec"]["selector"]["matchLabels"]),
                           ("Service", lambda d: d["spec"]["selector"])):
        assert selector(one(docs, kind)).items() <= pod_labels.items(), kind


def test_dashboard_configmap_carries_the_dashboard_file():
    import json

    cm = one(manifests(), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["mamtra.json"]) == json.loads(DASHBOARD.read_text())


def test_notes_warn_when_the_api_is_open():
    assert "WARNING: no API key" in render()["mamtra/templates/NOTES.txt"]
    assert "WARNING" not in render(SCENARIOS["api-key-and-volume"])["mamtra/templates/NOTES.txt"]


@pytest.mark.parametrize("scenario", ["default", "cuda"])
def test_helm_cli_renders_the_same_as_the_sdk(scenario, tmp_path):
    """Where a helm binary is on PATH (a developer's machine; CI has only the SDK), `helm template` agrees."""
    import shutil
    import subprocess

    exe = shutil.which("helm")
    if exe is None:
        pytest.skip("no helm binary on PATH; CI renders with the SDK")
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(SCENARIOS[scenario]))
    out = subprocess.run([exe, "template", "tts", str(CHART), "-n", NAMESPACE, "-f", str(values)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    cli = {key(d): d for d in yaml.safe_load_all(out) if d}
    assert cli == {key(d): d for d in manifests(SCENARIOS[scenario])}
