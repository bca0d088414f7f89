"""values.yaml and values-gpu.yaml against values.schema.json, and the schema's refusals of bad values."""

from __future__ import annotations

import copy

import jsonschema
import pytest

from tests.deploy.chart import default_values, gpu_values, merge, schema


def _errors(values: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(schema())
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(values)]


def test_schema_is_valid_draft7():
    jsonschema.Draft7Validator.check_schema(schema())


@pytest.mark.parametrize("name", ["values.yaml", "values.yaml + values-gpu.yaml"])
def test_values_files_validate(name):
    values = default_values() if name == "values.yaml" else merge(default_values(), gpu_values())
    assert _errors(values) == []


def test_every_default_value_is_declared_in_the_schema():
    """additionalProperties: false at every object we own, so a typo in a values file is an error, not a no-op."""
    values = merge(default_values(), {"autoscaling": {"minReplica": 2}})
    assert any("minReplica" in e for e in _errors(values))


@pytest.mark.parametrize("override, field", [
    ({"autoscaling": {"mode": "cpu"}}, "autoscaling/mode"),
    ({"autoscaling": {"metrics": ["cpu"]}}, "autoscaling/metrics"),
    ({"autoscaling": {"metrics": []}}, "autoscaling/metrics"),
    ({"autoscaling": {"targetSlotUtilization": 1.5}}, "autoscaling/targetSlotUtilization"),
    ({"mamtra": {"device": "gpu"}}, "mamtra/device"),
    ({"mamtra": {"maxStreams": 0}}, "mamtra/maxStreams"),
    ({"mamtra": {"extraEnv": {"API_KEY": "x"}}}, "mamtra/extraEnv"),
    ({"podSecurityContext": {"runAsNonRoot": False}}, "podSecurityContext/runAsNonRoot"),
    ({"securityContext": {"allowPrivilegeEscalation": True}}, "securityContext/allowPrivilegeEscalation"),
    ({"containerPort": 80}, "containerPort"),
    ({"image": {"pullPolicy": "Sometimes"}}, "image/pullPolicy"),
    ({"serviceMonitor": {"interval": "15"}}, "serviceMonitor/interval"),
])
def test_schema_rejects_bad_values(override, field):
    errors = _errors(merge(default_values(), override))
    assert any(e.startswith(field) for e in errors), errors


def test_schema_requires_the_settings_the_deployment_needs():
    values = copy.deepcopy(default_values())
    del values["mamtra"]["drainTimeoutS"]
    assert any("drainTimeoutS" in e for e in _errors(values))


def test_gpu_values_ask_for_one_gpu_and_cuda():
    values = merge(default_values(), gpu_values())
    assert values["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert values["mamtra"]["device"] == "cuda"
    assert values["autoscaling"]["enabled"] is True
    assert values["image"]["variant"] == "cuda"
