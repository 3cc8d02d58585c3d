"""`specfleet capture`: ls, show, export and retain over a directory store, the store found
from a --store-config file or from the resource in a (fake) cluster."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from specfleet import capturestore, cli
from specfleet.api.capture import BatchKey, resource_root

NOW = datetime.now(UTC).replace(microsecond=0)
HOUR_AGO = NOW.replace(minute=0, second=0) - timedelta(hours=1)
ROOT = resource_root("", "RoutingPolicy", "ml", "assistant")


def line(rid: str, time: datetime, tier: str, model: str) -> str:
    # Spacing no serializer would choose: export must give the line back as stored.
    return (
        f'{{"id": "{rid}",  "time": "{time:%Y-%m-%dT%H:%M:%SZ}", '
        f'"route": {{"tier": "{tier}", "model": "{model}"}}, "tokens": {{"prompt": 3}}}}'
    )


def write_batch(directory: Path, written: datetime, lines: Sequence[str], pod: str = "p") -> int:
    key = BatchKey(written=written, component="router", pod=pod, seq=0, records=len(lines))
    path = directory / key.name(ROOT)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress("".join(f"{x}\n" for x in lines).encode()))
    return path.stat().st_size


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, list[str], list[int]]:
    """A store with two hours of a RoutingPolicy's records; its config file, lines, sizes."""
    data = tmp_path / "data"
    first = [
        line("r1", HOUR_AGO + timedelta(minutes=1), "simple", "llama-3b"),
        line("r2", HOUR_AGO + timedelta(minutes=2), "complex", "llama-70b"),
    ]
    second = [line("r3", HOUR_AGO + timedelta(minutes=3), "simple", "llama-3b")]
    third = [line("r4", HOUR_AGO + timedelta(minutes=61), "medium", "llama-8b")]
    sizes = [
        write_batch(data, HOUR_AGO + timedelta(minutes=2), first),
        write_batch(data, HOUR_AGO + timedelta(minutes=4), second, pod="q"),
        write_batch(data, HOUR_AGO + timedelta(minutes=62), third),
    ]
    config = tmp_path / "store.yaml"
    config.write_text(
        f"kind: RoutingPolicy\nnamespace: ml\nname: assistant\nstore:\n  directory: {data}\n"
    )
    return config, [*first, *second, *third], sizes


def test_ls_lists_hours_with_routes_and_totals(
    store: tuple[Path, list[str], list[int]], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _, sizes = store
    assert cli.main(["capture", "ls", "--store-config", str(config)]) == 0
    rows = [row.split() for row in capsys.readouterr().out.splitlines()]
    hour = f"{HOUR_AGO:%Y-%m-%d %H:00}".split()
    later = f"{HOUR_AGO + timedelta(hours=1):%Y-%m-%d %H:00}".split()
    assert rows == [
        ["HOUR", "TIER", "MODEL", "BATCHES", "RECORDS", "BYTES"],
        [*hour, "complex,simple", "llama-3b,llama-70b", "2", "3", str(sizes[0] + sizes[1])],
        [*later, "medium", "llama-8b", "1", "1", str(sizes[2])],
        ["TOTAL", "3", "4", str(sum(sizes))],
    ]


def test_ls_since_shows_whole_hours_from_there(
    store: tuple[Path, list[str], list[int]], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _, _ = store
    since = (HOUR_AGO + timedelta(minutes=90)).isoformat()
    assert cli.main(["capture", "ls", "--store-config", str(config), "--since", since]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3  # header, the later hour, totals
    assert out[-1].split() == ["TOTAL", "1", "1", out[1].split()[-1]]


def test_export_gives_the_stored_lines(
    store: tuple[Path, list[str], list[int]], capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    config, lines, _ = store
    assert cli.main(["capture", "export", "--store-config", str(config)]) == 0
    assert capsysbinary.readouterr().out == "".join(f"{x}\n" for x in lines).encode()


@pytest.mark.parametrize(
    ("flags", "ids"),
    [
        (["--tier", "simple"], ["r1", "r3"]),
        (["--model", "llama-70b"], ["r2"]),
        (["--tier", "simple", "--model", "llama-70b"], []),
        (["--limit", "2"], ["r1", "r2"]),
        (["--tier", "simple", "--limit", "1"], ["r1"]),
        # r2 at minute 2 is in, r3 at minute 3 is out: until is exclusive.
        (["--since", "H+2", "--until", "H+3"], ["r2"]),
        (["--since", "H+3"], ["r3", "r4"]),
    ],
)
def test_export_filters(
    store: tuple[Path, list[str], list[int]],
    capsysbinary: pytest.CaptureFixture[bytes],
    flags: list[str],
    ids: list[str],
) -> None:
    config, lines, _ = store
    flags = [
        (HOUR_AGO + timedelta(minutes=int(f[2:]))).isoformat() if f.startswith("H+") else f
        for f in flags
    ]
    assert cli.main(["capture", "export", "--store-config", str(config), *flags]) == 0
    by_id = {json.loads(x)["id"]: x for x in lines}
    assert capsysbinary.readouterr().out == "".join(f"{by_id[i]}\n" for i in ids).encode()


def test_export_since_a_duration_before_now(
    tmp_path: Path, store: tuple[Path, list[str], list[int]]
) -> None:
    config, _, _ = store
    data = tmp_path / "data"
    write_batch(data, NOW - timedelta(days=3), [line("old", NOW - timedelta(days=3), "a", "b")])
    out = tmp_path / "out.jsonl"
    argv = ["capture", "export", "--store-config", str(config), "--since", "48h", "-o", str(out)]
    assert cli.main(argv) == 0
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["r1", "r2", "r3", "r4"]


def pretty_records(text: str) -> list[dict[str, Any]]:
    """The JSON objects printed one after another."""
    decoder, found, position = json.JSONDecoder(), [], 0
    while text[position:].strip():
        position += len(text[position:]) - len(text[position:].lstrip())
        record, position = decoder.raw_decode(text, position)
        found.append(record)
    return found


def test_show_by_id_and_the_last_records(
    store: tuple[Path, list[str], list[int]], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _, _ = store
    assert cli.main(["capture", "show", "--store-config", str(config), "--id", "r2"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["route"] == {"tier": "complex", "model": "llama-70b"}
    assert out.startswith('{\n  "id": "r2"')  # pretty

    assert cli.main(["capture", "show", "--store-config", str(config), "--last", "2"]) == 0
    assert [r["id"] for r in pretty_records(capsys.readouterr().out)] == ["r3", "r4"]

    assert cli.main(["capture", "show", "--store-config", str(config), "--id", "nope"]) == 1
    assert "no record 'nope'" in capsys.readouterr().err


def test_retain_prints_the_report_and_leaves_it_for_the_operator(
    tmp_path: Path,
    store: tuple[Path, list[str], list[int]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config, _, sizes = store
    data = tmp_path / "data"
    write_batch(data, NOW - timedelta(days=40), ["{}"] * 7)
    log = tmp_path / "termination-log"
    log.write_text("")
    monkeypatch.setattr(cli, "TERMINATION_LOG", log)

    argv = ["capture", "retain", "--store-config", str(config), "--retention", "720h"]
    assert cli.main(argv) == 0

    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(log.read_text())
    assert {k: v for k, v in report.items() if k != "time"} == {
        "deletedBatches": 1,
        "deletedRecords": 7,
        "keptBatches": 3,
        "keptRecords": 4,
        "keptBytes": sum(sizes),
    }


def test_retain_without_a_termination_log_only_prints(
    tmp_path: Path,
    store: tuple[Path, list[str], list[int]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config, _, _ = store
    monkeypatch.setattr(cli, "TERMINATION_LOG", tmp_path / "absent")
    # A day: the batches (written an hour ago by the clock at import) stay within it however
    # long the suite takes to get here.
    argv = ["capture", "retain", "--store-config", str(config), "--retention", "24h"]
    assert cli.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["keptRecords"] == 4
    assert not (tmp_path / "absent").exists()


def test_retain_needs_a_retention_with_a_store_config(
    store: tuple[Path, list[str], list[int]], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _, _ = store
    assert cli.main(["capture", "retain", "--store-config", str(config)]) == 2
    assert "--retention is needed" in capsys.readouterr().err


# The store found from the resource in the cluster.


class FakeCluster:
    """The objects at their API paths, as `specfleet.kube.Kube.get_path` answers."""

    def __init__(self, objects: dict[str, dict[str, Any]]) -> None:
        self.objects = objects
        self.read: list[str] = []

    def get_path(
        self, path: str, what: str, query: list[tuple[str, str]] | None = None
    ) -> dict[str, Any] | None:
        self.read.append(path)
        return self.objects.get(path)


POLICY = "/apis/specfleet.dev/v1alpha1/namespaces/ml/routingpolicies/assistant"
SECRET = "/api/v1/namespaces/ml/secrets/capture-s3"


def policy(capture: dict[str, Any] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"tiers": [{"name": "all", "model": "llama-8b"}]}
    if capture is not None:
        spec["capture"] = capture
    return {"kind": "RoutingPolicy", "metadata": {"name": "assistant"}, "spec": spec}


PVC = {"sampleRate": 0.1, "store": {"pvc": {"claimName": "capture-data", "prefix": "cap"}}}


def use(monkeypatch: pytest.MonkeyPatch, objects: dict[str, dict[str, Any]]) -> FakeCluster:
    cluster = FakeCluster(objects)
    monkeypatch.setattr(cli, "_cluster", lambda: cluster)
    return cluster


def test_a_volume_store_needs_the_directory_it_is_mounted_at(
    tmp_path: Path,
    store: tuple[Path, list[str], list[int]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use(monkeypatch, {POLICY: policy(PVC)})
    assert cli.main(["capture", "ls", "rp/assistant", "-n", "ml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("specfleet capture ls: RoutingPolicy ml/assistant captures to ")
    assert "PersistentVolumeClaim capture-data" in err
    assert "cannot be read from outside the cluster" in err
    assert "--directory" in err

    # Mounted at tmp_path/mnt, the records are under the store's prefix there.
    (tmp_path / "mnt").mkdir()
    (tmp_path / "data").rename(tmp_path / "mnt" / "cap")
    argv = ["capture", "export", "routingpolicy/assistant", "-n", "ml"]
    assert cli.main([*argv, "--directory", str(tmp_path / "mnt")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4


def test_a_resource_without_capture_says_so(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    use(monkeypatch, {POLICY: policy(None)})
    assert cli.main(["capture", "show", "rp/assistant", "-n", "ml"]) == 2
    assert "RoutingPolicy ml/assistant has no spec.capture" in capsys.readouterr().err
    assert cli.main(["capture", "show", "rp/other", "-n", "ml"]) == 2
    assert "RoutingPolicy ml/other not found" in capsys.readouterr().err


@pytest.mark.parametrize("ref", ["pod/x", "rp", "rp/", "models/x"])
def test_a_kind_must_be_one_of_ours(ref: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["capture", "ls", ref]) == 2
    assert "KIND/NAME" in capsys.readouterr().err


def test_an_s3_store_is_read_with_its_credentials_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = {"bucket": "cap", "endpoint": "http://minio:9000", "credentialsSecret": "capture-s3"}
    secret = {
        "data": {
            "AWS_ACCESS_KEY_ID": base64.b64encode(b"id").decode(),
            "AWS_SECRET_ACCESS_KEY": base64.b64encode(b"s3cret").decode(),
        }
    }
    model = {
        "kind": "InferenceModel",
        "spec": {"capture": {"sampleRate": 1.0, "store": {"s3": s3}}},
    }
    path = "/apis/specfleet.dev/v1alpha1/namespaces/ml/inferencemodels/llama-8b"
    cluster = use(monkeypatch, {path: model, SECRET: secret})
    opened: list[tuple[Any, ...]] = []

    def open_store(location: Any, **kwargs: Any) -> capturestore.Store:
        opened.append((location, kwargs))
        return capturestore.DirectoryStore(tmp_path)

    monkeypatch.setattr(capturestore, "open_store", open_store)
    assert cli.main(["capture", "ls", "IM/llama-8b", "-n", "ml"]) == 0
    assert cluster.read == [path, SECRET]
    [(location, kwargs)] = opened
    assert location.s3.bucket == "cap"
    assert kwargs == {"credentials": ("id", "s3cret"), "credentials_from": "Secret ml/capture-s3"}


def test_a_missing_credentials_secret_is_named(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = {"bucket": "cap", "credentialsSecret": "capture-s3"}
    use(monkeypatch, {POLICY: policy({"sampleRate": 1.0, "store": {"s3": s3}})})
    assert cli.main(["capture", "ls", "rp/assistant", "-n", "ml"]) == 2
    assert "Secret ml/capture-s3 (spec.capture.store.s3.credentialsSecret) not found" in (
        capsys.readouterr().err
    )
