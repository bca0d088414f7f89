"""Helpers for the deployment tests: paths, values merging as Helm does it, and offline chart rendering.

Rendering uses helm-python-sdk (Helm's Go SDK in a wheel, from the dev extra): apt and PyPI ship no helm binary.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm"
DOCKER = ROOT / "docker"
DASHBOARD = CHART / "dashboards" / "mamtra.json"
ADAPTER_VALUES = CHART / "examples" / "prometheus-adapter-values.yaml"
RELEASE, NAMESPACE = "tts", "speech"
FULLNAME = f"{RELEASE}-mamtra"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def merge(base: dict, override: dict) -> dict:
    """Helm's coalescing of a values file onto the defaults: maps merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def default_values() -> dict:
    return load_yaml(CHART / "values.yaml")


def gpu_values() -> dict:
    """values-gpu.yaml as given on the command line (Helm merges it onto values.yaml itself)."""
    return load_yaml(CHART / "values-gpu.yaml")


@functools.cache
def schema() -> dict:
    return json.loads((CHART / "values.schema.json").read_text())


def helm():
    return pytest.importorskip("helm_python", reason="helm-python-sdk (dev extra) renders the chart")


def render(values: dict | None = None) -> dict[str, str]:
    """Template path -> rendered text, for release RELEASE in NAMESPACE."""
    with helm().Chart.load(str(CHART)) as chart:
        return chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)


def manifests(values: dict | None = None) -> list[dict]:
    """Every Kubernetes object the chart renders (NOTES.txt left out)."""
    docs = []
    for path, text in render(values).items():
        if path.endswith(".txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def by_kind(docs: list[dict]) -> dict[str, list[dict]]:
    kinds: dict[str, list[dict]] = {}
    for d in docs:
        kinds.setdefault(d["kind"], []).append(d)
    return kinds


def one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(docs: list[dict]) -> dict:
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def env(docs: list[dict]) -> dict[str, dict]:
    return {e["name"]: e for e in container(docs).get("env", [])}
