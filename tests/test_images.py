"""The container images as declared, without building them: images/Containerfile (a public base
by default, the three targets, each a non-root user with the OCI labels, only the virtualenv
copied from the builder) and scripts/images (tags from the chart, the images the operator and
the chart name). `make images` builds them for real."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from specfleet.config import Config
from tests.corpus import ROOT

CONTAINERFILE = ROOT / "images" / "Containerfile"
SCRIPT = ROOT / "scripts" / "images"
CHART = ROOT / "charts" / "specfleet"
TARGETS = ("operator", "runtime", "vllm-sim", "learn")
LABELS = ("source", "version", "title", "description", "licenses")
APP_VERSION = str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, instruction: str) -> str | None:
        found = [rest for name, rest in self.instructions if name == instruction]
        return found[-1] if found else None


def _parse(text: str) -> tuple[list[tuple[str, str]], dict[str, Stage]]:
    """The instructions before the first FROM, and the stages by name (Dockerfile syntax:
    comments, backslash continuations, `FROM image AS name`)."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    preamble: list[tuple[str, str]] = []
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in lines:
        instruction, _, rest = line.strip().partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest.strip(), re.IGNORECASE)
            assert match, f"every stage is named: FROM {rest}"
            current = Stage(match.group(1), match.group(2))
            stages[current.name] = current
        elif current is None:
            preamble.append((instruction, rest.strip()))
        else:
            current.instructions.append((instruction, rest.strip()))
    return preamble, stages


PREAMBLE, STAGES = _parse(CONTAINERFILE.read_text())


def _chain(name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest first."""
    chain = [STAGES[name]]
    while chain[-1].base in STAGES:
        chain.append(STAGES[chain[-1].base])
    return chain


def _effective(name: str, instruction: str) -> str | None:
    for stage in _chain(name):
        if (value := stage.last(instruction)) is not None:
            return value
    return None


def _labels(name: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for stage in reversed(_chain(name)):
        for instruction, rest in stage.instructions:
            if instruction == "LABEL":
                labels.update(re.findall(r'(\S+?)="([^"]*)"', rest))
    return labels


def test_the_base_is_an_argument_with_a_public_python_default() -> None:
    args = dict(rest.split("=", 1) for name, rest in PREAMBLE if name == "ARG" and "=" in rest)
    default = args["BASE"]
    # A reference any `docker build` can pull: no local or placeholder registry.
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", default), default
    assert not default.startswith(("localhost/", "REGISTRY"))
    for stage in ("builder", *TARGETS):
        assert _chain(stage)[-1].base == "${BASE}", stage


@pytest.mark.parametrize("target", TARGETS)
def test_each_target_runs_as_a_non_root_numeric_user(target: str) -> None:
    user = _effective(target, "USER")
    assert user is not None, f"{target} sets no USER"
    assert re.fullmatch(r"\d+(:\d+)?", user), f"{target}: USER {user} is not numeric"
    assert all(int(part) != 0 for part in user.split(":")), f"{target} runs as root"


def test_the_operator_runs_as_the_chart_pod_does() -> None:
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    uid = re.search(r"runAsUser: (\d+)", deployment)
    gid = re.search(r"runAsGroup: (\d+)", deployment)
    assert uid and gid
    assert _effective("operator", "USER") == f"{uid.group(1)}:{gid.group(1)}"
    assert "command: [specfleet, run]" in deployment
    assert _effective("operator", "ENTRYPOINT") == '["specfleet"]'
    assert _effective("operator", "CMD") == '["run"]'


@pytest.mark.parametrize("target", TARGETS)
def test_each_target_carries_the_oci_labels(target: str) -> None:
    labels = _labels(target)
    for label in LABELS:
        assert f"org.opencontainers.image.{label}" in labels, f"{target} lacks {label}"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert labels["org.opencontainers.image.title"] == f"specfleet-{target}"


@pytest.mark.parametrize("target", TARGETS)
def test_a_final_image_takes_only_the_virtualenv_from_the_builder(target: str) -> None:
    for stage in _chain(target):
        if stage.name not in TARGETS:
            continue
        for instruction, rest in stage.instructions:
            if instruction == "COPY" and "--from=" in rest:
                assert rest.split()[1:] == ["/opt/specfleet", "/opt/specfleet"], rest
            assert not (instruction == "RUN" and "pip" in rest), f"{stage.name}: {rest}"
    env = _effective(target, "ENV") or ""
    assert "PATH=/opt/specfleet/bin:" in env


def _commands(stage: str) -> list[str]:
    return [" ".join(rest.split()) for name, rest in STAGES[stage].instructions if name == "RUN"]


def test_the_venvs_get_their_dependencies_then_the_wheel_without_them() -> None:
    assert any("pip wheel --no-cache-dir --no-deps" in c for c in _commands("builder"))
    venvs = (
        ("operator-venv", "operator.txt"),
        ("runtime-venv", "runtime.txt"),
        ("learn-venv", "learn.txt"),
    )
    for venv, requirements in venvs:
        steps = [(name, " ".join(rest.split())) for name, rest in STAGES[venv].instructions]
        dependencies = steps.index(("RUN", next(c for c in _commands(venv) if requirements in c)))
        wheel = steps.index(("COPY", "--from=builder /wheels /wheels"))
        # The dependencies' layer comes before anything built from the sources.
        assert dependencies < wheel, venv
        assert f"-r /src/{requirements}" in steps[dependencies][1]
        assert "--no-deps /wheels/specfleet-*.whl" in steps[-1][1], venv
        assert " -e " not in " ".join(_commands(venv))
    assert STAGES["operator"].last("COPY") == "--from=operator-venv /opt/specfleet /opt/specfleet"
    assert STAGES["runtime"].last("COPY") == "--from=runtime-venv /opt/specfleet /opt/specfleet"
    assert STAGES["learn"].last("COPY") == "--from=learn-venv /opt/specfleet /opt/specfleet"


def test_the_requirement_files_are_pyprojects_dependencies_with_their_extra(
    tmp_path: Path,
) -> None:
    (script,) = [c for c in _commands("builder") if "tomllib" in c]
    program = script.removeprefix("python3 -c ").strip("'").replace("/src/", f"{tmp_path}/")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    subprocess.run([sys.executable, "-c", program], cwd=tmp_path, check=True, timeout=30)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    operator = (tmp_path / "operator.txt").read_text().split("\n")[:-1]
    runtime = (tmp_path / "runtime.txt").read_text().split("\n")[:-1]
    assert operator == project["dependencies"]
    assert runtime == project["dependencies"] + project["optional-dependencies"]["runtime"]
    assert any(r.startswith("aiohttp") for r in runtime)
    assert not any(r.startswith("aiohttp") for r in operator)
    learn = (tmp_path / "learn.txt").read_text().split("\n")[:-1]
    assert learn == project["dependencies"] + project["optional-dependencies"]["learn"]
    assert any(r.startswith("scikit-learn") for r in learn)


def test_the_vllm_stand_in_is_vllm_on_the_path() -> None:
    assert STAGES["vllm-sim"].base == "runtime"
    assert STAGES["vllm-sim"].last("RUN") == "ln -s specfleet-vllm-sim /opt/specfleet/bin/vllm"
    assert _effective("vllm-sim", "ENTRYPOINT") == '["vllm", "serve"]'


def test_the_build_context_leaves_out_the_virtualenv_and_git() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "**/__pycache__"} <= set(ignored)


def _script_copy(tmp_path: Path, app_version: str) -> Path:
    """scripts/images in a tree whose chart has another appVersion."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "charts" / "specfleet").mkdir(parents=True)
    shutil.copy(SCRIPT, tmp_path / "scripts" / "images")
    chart = (CHART / "Chart.yaml").read_text()
    chart = re.sub(r"(?m)^appVersion: .*$", f'appVersion: "{app_version}"', chart)
    (tmp_path / "charts" / "specfleet" / "Chart.yaml").write_text(chart)
    return tmp_path / "scripts" / "images"


def _tags(script: Path) -> list[str]:
    run = subprocess.run(
        [str(script), "--print-tags"], capture_output=True, text=True, check=True, timeout=30
    )
    return run.stdout.split()


def test_the_tags_come_from_the_charts_app_version(tmp_path: Path) -> None:
    assert _tags(_script_copy(tmp_path, "9.8.7")) == [
        "docker.io/specfleet/operator:9.8.7",
        "docker.io/specfleet/runtime:9.8.7",
        "docker.io/specfleet/vllm-sim:9.8.7",
        "docker.io/specfleet/learn:9.8.7",
        "registry.k8s.io/pause:3.10.2",
    ]


def test_it_builds_the_images_the_chart_and_the_operator_name() -> None:
    tags = _tags(SCRIPT)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart_image = f"docker.io/{values['image']['repository']}:{APP_VERSION}"
    assert chart_image in tags
    assert f"docker.io/{values['settings']['runtimeImage']}" in tags
    assert f"docker.io/{Config().runtime_image}" in tags
    assert f"docker.io/{values['settings']['learnImage']}" in tags
    assert f"docker.io/{Config().learn_image}" in tags


def test_it_prints_the_archives_only_once_they_are_built(tmp_path: Path) -> None:
    env = {**os.environ, "SPECFLEET_CACHE": str(tmp_path)}
    argv = [str(SCRIPT), "--print-archives"]
    missing = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30, check=False)
    assert missing.returncode == 1
    assert "run scripts/images" in missing.stderr
    archives = [
        tmp_path / "images" / name
        for name in (
            f"operator-{APP_VERSION}.oci.tar",
            f"runtime-{APP_VERSION}.oci.tar",
            f"vllm-sim-{APP_VERSION}.oci.tar",
            f"learn-{APP_VERSION}.oci.tar",
            "pause-3.10.2.oci.tar",
        )
    ]
    assert [line for line in missing.stderr.splitlines() if "missing:" in line] == [
        f"[images] missing: {path}" for path in archives
    ]
    archives[0].parent.mkdir()
    for path in archives:
        path.write_bytes(b"archive")
    built = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30, check=True)
    assert built.stdout.split() == [str(path) for path in archives]
