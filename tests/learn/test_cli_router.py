"""`specfleet router`: train and evaluate from a policy manifest or a policy in a (fake)
cluster, labels imported into and exported from a directory store, and a clear message with
exit code 2 for every bad input."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from specfleet import cli
from specfleet.routing import learned
from tests.learn import traffic

CAPTURE = {"sampleRate": 0.1, "store": {"pvc": {"claimName": "capture-data", "prefix": "cap"}}}
POLICY_PATH = "/apis/specfleet.dev/v1alpha1/namespaces/ml/routingpolicies/assistant"


def manifest(tmp_path: Path, capture: dict[str, Any] | None = None) -> Path:
    document = yaml.safe_load(traffic.POLICY_YAML)
    if capture is not None:
        document["spec"]["capture"] = capture
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def labels_file(tmp_path: Path, count: int, seed: int, name: str = "labels.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(traffic.jsonl(traffic.lines(count, seed)))
    return path


class FakeCluster:
    """Objects at their API paths, as `specfleet.kube.Kube.get_path` answers."""

    def __init__(self, objects: dict[str, dict[str, Any]]) -> None:
        self.objects = objects

    def get_path(
        self, path: str, what: str, query: list[tuple[str, str]] | None = None
    ) -> dict[str, Any] | None:
        return self.objects.get(path)


def test_train_then_evaluate_from_a_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1796083200")
    policy, data = manifest(tmp_path), labels_file(tmp_path, 300, seed=1)
    out = tmp_path / "classifier"
    argv = ["router", "train", "--policy", str(policy), "--data", str(data), "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert re.match(r"trained on 2\d\d of 300 labelled requests \(simple \d+, ", printed)
    assert re.search(r"terms; \d\d held out for evaluation\n", printed)
    assert re.search(r"threshold [\d.]+ for quality target 0.95: 5-fold cross-validated", printed)
    first = (out / learned.FILENAME).read_bytes()
    report = json.loads((out / "report.json").read_text())
    assert report["crossValidated"]["quality"] >= 0.95
    # Trained again at the same SOURCE_DATE_EPOCH: the same file.
    assert cli.main(argv) == 0
    capsys.readouterr()
    assert (out / learned.FILENAME).read_bytes() == first
    assert learned.load(out).artifact.trained_at.isoformat() == "2026-12-01T00:00:00+00:00"

    unseen = labels_file(tmp_path, 200, seed=2, name="unseen.jsonl")
    argv = ["router", "evaluate", "--policy", str(policy), "--data", str(unseen)]
    assert cli.main([*argv, "--classifier", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("200 labelled requests; learned: classifier sha256:")
    assert "  label \\ routed  simple  medium  complex" in lines
    figures = dict(pair.split("=") for pair in lines[-1].split())
    assert list(figures) == [
        "learned_quality",
        "learned_cost",
        "heuristic_quality",
        "heuristic_cost",
        "apgr",
        "labels",
    ]
    assert figures["labels"] == "200"
    assert float(figures["learned_quality"]) > float(figures["heuristic_quality"])


def test_a_policy_is_read_from_the_cluster_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    body = yaml.safe_load(traffic.POLICY_YAML)
    monkeypatch.setattr(cli, "_cluster", lambda: FakeCluster({POLICY_PATH: body}))
    data = labels_file(tmp_path, 60, seed=3)
    argv = ["router", "evaluate", "--policy", "assistant", "-n", "ml", "--data", str(data)]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith(" labels=60")
    assert cli.main([*argv[:4], "-n", "other", *argv[6:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("specfleet router evaluate: --policy assistant: no file of that name,")
    assert "RoutingPolicy other/assistant is not in the cluster" in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["router", "train", "--policy", "nowhere/policy.yaml", "--out", "x"],
            "specfleet router train: --policy nowhere/policy.yaml: no such file",
        ),
        (
            ["router", "evaluate", "--classifier", "missing-dir"],
            "specfleet router evaluate: missing-dir: cannot be read",
        ),
    ],
)
def test_bad_paths_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    data = labels_file(tmp_path, 30, seed=1)
    full = [*argv, "--data", str(data)]
    if "--policy" not in argv:
        full += ["--policy", str(manifest(tmp_path))]
    assert cli.main(full) == 2
    assert capsys.readouterr().err.startswith(expected)


def test_labels_of_unknown_tiers_are_refused_with_the_tiers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "x", "label": "gpt-huge"}\n' * 30)
    policy = manifest(tmp_path)
    argv = ["router", "train", "--policy", str(policy), "--data", str(data), "--out", "x"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"specfleet router train: {data}: 30 of 30 labelled lines are invalid")
    assert "line 1: label 'gpt-huge' is not a tier of the policy: use one of simple, medium" in err
    assert "and 25 more" in err
    assert cli.main([*argv, "--skip-invalid"]) == 2
    err = capsys.readouterr().err
    assert "left out 30 invalid lines" in err
    assert (
        "specfleet router train: 0 labelled requests on the training side (0 more held out for "
        "evaluation, 0 in all): training needs at least 20" in err
    )


def test_training_refusals_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = labels_file(tmp_path, 12, seed=1)
    argv = ["router", "train", "--policy", str(manifest(tmp_path)), "--data", str(data)]
    assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert (
        "6 labelled requests on the training side (6 more held out for evaluation, 12 in all): "
        "training needs at least 20" in capsys.readouterr().err
    )
    assert not (tmp_path / "out").exists()


def test_labels_import_and_export_through_a_directory_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = manifest(tmp_path, CAPTURE)
    data = labels_file(tmp_path, 50, seed=1)
    mount = tmp_path / "mnt"
    (mount / "cap").mkdir(parents=True)  # where the volume is mounted, its prefix in it
    store = ["--policy", str(policy), "--directory", str(mount)]
    assert cli.main(["router", "labels", "import", str(data), *store]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(
        "imported 50 labelled requests into ml/routingpolicy/assistant/labels/"
    )
    stored = list((mount / "cap" / "ml" / "routingpolicy" / "assistant" / "labels").iterdir())
    assert len(stored) == 1
    assert re.fullmatch(r"imported-\d{8}T\d{12}Z-[0-9a-f]{16}-50\.jsonl\.gz", stored[0].name)
    # The same labels again: kept once.
    assert cli.main(["router", "labels", "import", str(data), *store]) == 0
    assert "already in" in capsys.readouterr().out
    other = labels_file(tmp_path, 10, seed=2, name="more.jsonl")
    assert cli.main(["router", "labels", "import", str(other), *store]) == 0
    capsys.readouterr()

    exported = tmp_path / "exported.jsonl"
    assert cli.main(["router", "labels", "export", *store, "-o", str(exported)]) == 0
    lines = exported.read_bytes().splitlines()
    assert len(lines) == 60
    first = json.loads(lines[0])
    assert first["source"] in {"imported", "judged"} and first["weight"] == 1
    original = traffic.lines(50, 1)[0]
    assert first["label"] == original["label"]
    assert first.get("messages") == original.get("messages")
    assert first.get("prompt") == original.get("prompt")
    assert gzip.decompress(stored[0].read_bytes()).splitlines() == lines[:50]
    # What was exported trains as the original does.
    argv = ["router", "evaluate", "--policy", str(policy), "--data", str(exported)]
    assert cli.main(argv) == 0


def test_labels_import_into_a_fresh_volume_makes_the_directories_it_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = manifest(tmp_path, CAPTURE)
    data = labels_file(tmp_path, 5, seed=1)
    mount = tmp_path / "mnt"
    mount.mkdir()  # a fresh volume: nothing in it yet, not even the store's prefix
    store = ["--policy", str(policy), "--directory", str(mount)]
    assert cli.main(["router", "labels", "import", str(data), *store]) == 0
    assert capsys.readouterr().out.startswith("imported 5 labelled requests into ")
    stored = mount / "cap" / "ml" / "routingpolicy" / "assistant" / "labels"
    assert len(list(stored.iterdir())) == 1
    assert cli.main(["router", "labels", "export", *store]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 5


def test_labels_are_not_batches_for_capture_and_retention(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = manifest(tmp_path, CAPTURE)
    mount = tmp_path / "mnt"
    (mount / "cap").mkdir(parents=True)
    data = labels_file(tmp_path, 5, seed=1)
    assert cli.main(["router", "labels", "import", str(data), "--policy", str(policy),
                     "--directory", str(mount)]) == 0  # fmt: skip
    config = tmp_path / "store.yaml"
    config.write_text(
        "kind: RoutingPolicy\nnamespace: ml\nname: assistant\n"
        f"store: {{directory: {mount / 'cap'}}}\n"
    )
    capsys.readouterr()
    assert cli.main(["capture", "ls", "--store-config", str(config)]) == 0
    assert "nothing captured" in capsys.readouterr().err
    assert cli.main(["capture", "retain", "--store-config", str(config), "--retention", "1s"]) == 0
    assert json.loads(capsys.readouterr().out)["deletedBatches"] == 0
    assert cli.main(["router", "labels", "export", "--store-config", str(config)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 5


def test_labels_need_a_store_and_the_policys_tiers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = labels_file(tmp_path, 5, seed=1)
    bare = manifest(tmp_path)
    assert cli.main(["router", "labels", "import", str(data), "--policy", str(bare)]) == 2
    assert capsys.readouterr().err == (
        "specfleet router labels import: RoutingPolicy ml/assistant has no spec.capture, "
        "so no store to keep labels in: set spec.capture.store, or give --store-config (or "
        "--directory)\n"
    )
    with_store = manifest(tmp_path, CAPTURE)
    assert cli.main(["router", "labels", "import", str(data), "--policy", str(with_store)]) == 2
    assert "cannot be read from outside the cluster" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "label": "tiny"}\n')
    argv = ["router", "labels", "import", str(bad), "--policy", str(with_store)]
    assert cli.main([*argv, "--directory", str(tmp_path / "mnt")]) == 2
    assert "label 'tiny' is not a tier of the policy" in capsys.readouterr().err
    assert not (tmp_path / "mnt").exists()
    assert cli.main(["router", "labels", "export"]) == 2
    assert "give --policy" in capsys.readouterr().err
