"""The capture store read back: batches listed from their names, records streamed as stored,
the newest records, retention's decision and report, and the S3 calls (through botocore's
Stubber: no network)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from specfleet import capturestore
from specfleet.api.capture import BatchKey, S3Location, Store, resource_root

ROOT = resource_root("", "RoutingPolicy", "ml", "assistant")
T0 = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)


def record(rid: str, time: datetime, tier: str | None = None, model: str | None = None) -> str:
    route = None if tier is None and model is None else {"tier": tier, "model": model}
    body = {"schema": "specfleet.capture/v1", "id": rid, "time": time.isoformat(), "route": route}
    return json.dumps(body)


def write_batch(
    directory: Path,
    written: datetime,
    lines: Sequence[str],
    *,
    pod: str = "assistant-7f9c-x2",
    seq: int = 0,
    root: str = ROOT,
) -> Path:
    key = BatchKey(written=written, component="router", pod=pod, seq=seq, records=len(lines))
    path = directory / key.name(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress("".join(f"{line}\n" for line in lines).encode()))
    return path


def test_batches_are_listed_from_their_names_oldest_first(tmp_path: Path) -> None:
    late = write_batch(tmp_path, T0 + timedelta(hours=1, minutes=5), [record("c", T0)])
    early = write_batch(tmp_path, T0 + timedelta(minutes=1), [record("a", T0)] * 3, seq=7)
    (late.parent / "router-x.jsonl.gz.tmp").write_bytes(b"partial")  # a writer's leftover
    other = resource_root("", "RoutingPolicy", "ml", "other")
    write_batch(tmp_path, T0, [record("z", T0)], root=other)

    store = capturestore.DirectoryStore(tmp_path)
    batches = capturestore.list_batches(store, ROOT)

    assert [b.path for b in batches] == [
        early.relative_to(tmp_path).as_posix(),
        late.relative_to(tmp_path).as_posix(),
    ]
    assert [b.key.records for b in batches] == [3, 1]
    assert batches[0].key.seq == 7
    assert [b.size for b in batches] == [early.stat().st_size, late.stat().st_size]


def test_a_time_slice_selects_batches_by_when_they_were_written(tmp_path: Path) -> None:
    for minutes in (0, 59, 60, 125):
        write_batch(tmp_path, T0 + timedelta(minutes=minutes), [record("r", T0)])
    store = capturestore.DirectoryStore(tmp_path)
    since, until = T0 + timedelta(minutes=59), T0 + timedelta(minutes=125)
    found = capturestore.list_batches(store, ROOT, since, until)
    assert [b.key.written for b in found] == [since, T0 + timedelta(minutes=60)]


def test_a_missing_resource_root_lists_nothing(tmp_path: Path) -> None:
    assert capturestore.list_batches(capturestore.DirectoryStore(tmp_path), ROOT) == []


def test_a_missing_store_directory_is_an_error_that_says_so(tmp_path: Path) -> None:
    store = capturestore.DirectoryStore(tmp_path / "not-mounted")
    with pytest.raises(capturestore.CaptureError, match="not-mounted does not exist"):
        capturestore.list_batches(store, ROOT)


def test_records_stream_as_the_lines_stored(tmp_path: Path) -> None:
    stored = ['{"id": "a",   "time": "2026-12-07T06:00:01Z"}', '{"time":"x","id":"b"}']
    write_batch(tmp_path, T0 + timedelta(minutes=1), stored)
    store = capturestore.DirectoryStore(tmp_path)
    found = list(capturestore.records(store, capturestore.list_batches(store, ROOT)))
    assert [line for line, _ in found] == [s.encode() for s in stored]
    assert [r["id"] for _, r in found] == ["a", "b"]


def test_a_line_that_is_not_json_names_its_batch(tmp_path: Path) -> None:
    path = write_batch(tmp_path, T0, ['{"id": "a"}', "{not json"])
    store = capturestore.DirectoryStore(tmp_path)
    with pytest.raises(capturestore.CaptureError, match=path.name):
        list(capturestore.records(store, capturestore.list_batches(store, ROOT)))


def test_find_returns_the_record_with_that_id(tmp_path: Path) -> None:
    write_batch(tmp_path, T0 + timedelta(minutes=1), [record("a", T0), record("b", T0)])
    write_batch(tmp_path, T0 + timedelta(minutes=2), [record("c", T0, tier="simple")])
    store = capturestore.DirectoryStore(tmp_path)
    batches = capturestore.list_batches(store, ROOT)
    found = capturestore.find(store, batches, "b")
    assert found is not None
    assert found["id"] == "b"
    assert capturestore.find(store, batches, "nope") is None


def test_last_gives_the_newest_records_by_time_across_pods(tmp_path: Path) -> None:
    at = [T0 + timedelta(seconds=s) for s in range(10)]
    # Two pods' batches: pod a's newest record is older than pod b's batch.
    write_batch(tmp_path, at[5], [record("a1", at[1]), record("a4", at[4])], pod="a")
    write_batch(tmp_path, at[6], [record("b3", at[3]), record("b5", at[5])], pod="b")
    write_batch(tmp_path, at[9], [record("a8", at[8])], pod="a", seq=1)
    store = capturestore.DirectoryStore(tmp_path)
    batches = capturestore.list_batches(store, ROOT)
    assert [r["id"] for r in capturestore.last(store, batches, 3)] == ["a4", "b5", "a8"]
    assert [r["id"] for r in capturestore.last(store, batches, 1)] == ["a8"]
    assert len(capturestore.last(store, batches, 10)) == 5


def test_last_stops_reading_once_older_batches_cannot_hold_newer_records(tmp_path: Path) -> None:
    old = write_batch(tmp_path, T0, [record("old", T0)])
    old.write_bytes(b"not gzip at all")  # reading it would fail
    write_batch(tmp_path, T0 + timedelta(minutes=5), [record("n", T0 + timedelta(minutes=4))])
    store = capturestore.DirectoryStore(tmp_path)
    batches = capturestore.list_batches(store, ROOT)
    assert [r["id"] for r in capturestore.last(store, batches, 1)] == ["n"]
    with pytest.raises(capturestore.CaptureError, match="not a complete gzip file"):
        capturestore.last(store, batches, 2)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, True),
        ({"tier": "simple"}, True),
        ({"tier": "complex"}, False),
        ({"model": "llama-3b"}, True),
        ({"tier": "simple", "model": "llama-8b"}, False),
        ({"since": T0 + timedelta(minutes=10)}, True),  # since is inclusive
        ({"since": T0 + timedelta(minutes=11)}, False),
        ({"until": T0 + timedelta(minutes=10)}, False),  # until is exclusive
        ({"until": T0 + timedelta(minutes=11)}, True),
    ],
)
def test_matches(filters: dict[str, Any], expected: bool) -> None:
    found = json.loads(record("r", T0 + timedelta(minutes=10), "simple", "llama-3b"))
    assert capturestore.matches(found, **filters) is expected


def test_a_record_without_route_or_time_matches_no_such_filter() -> None:
    bare = {"id": "r", "route": None}
    assert capturestore.matches(bare)
    assert not capturestore.matches(bare, tier="simple")
    assert not capturestore.matches(bare, since=T0)


def test_hour_rows_count_from_names_and_bytes_from_the_listing() -> None:
    def batch(minutes: int, records: int, size: int) -> capturestore.Batch:
        key = BatchKey(T0 + timedelta(minutes=minutes), "router", "p", minutes, records)
        return capturestore.Batch(key.name(ROOT), key, size)

    rows = capturestore.hour_rows([batch(70, 4, 100), batch(1, 2, 10), batch(59, 3, 20)])
    assert [(r.hour, r.batches, r.records, r.bytes) for r in rows] == [
        (T0, 2, 5, 30),
        (T0 + timedelta(hours=1), 1, 4, 100),
    ]


@pytest.mark.parametrize(
    ("since", "until", "expected"),
    [
        (None, None, (None, None)),
        (T0 + timedelta(minutes=30), None, (T0, None)),
        (None, T0 + timedelta(minutes=30), (None, T0 + timedelta(hours=1))),
        (None, T0, (None, T0)),
    ],
)
def test_whole_hours(
    since: datetime | None, until: datetime | None, expected: tuple[datetime | None, ...]
) -> None:
    assert capturestore.whole_hours(since, until) == expected


NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("written", "deleted"),
    [
        (datetime(2026, 12, 7, 6, 59, 59, tzinfo=UTC), True),  # hour ended 07:00, 3h ago
        (datetime(2026, 12, 7, 7, 0, 0, tzinfo=UTC), False),  # ended 08:00: exactly 2h ago
        (datetime(2026, 12, 7, 7, 59, 59, tzinfo=UTC), False),
        (datetime(2026, 12, 7, 9, 30, tzinfo=UTC), False),
        (datetime(2026, 11, 1, 0, 0, tzinfo=UTC), True),
    ],
)
def test_retention_deletes_hours_that_ended_more_than_retention_ago(
    written: datetime, deleted: bool
) -> None:
    key = BatchKey(written, "gate", "p", 0, 1)
    batch = capturestore.Batch(key.name(ROOT), key, 10)
    assert capturestore.expired([batch], timedelta(hours=2), NOW) == ([batch] if deleted else [])


def test_retain_deletes_the_expired_batches_and_reports(tmp_path: Path) -> None:
    gone = [
        write_batch(tmp_path, datetime(2026, 12, 7, 5, 10, tzinfo=UTC), ["{}"] * 3),
        write_batch(tmp_path, datetime(2026, 12, 7, 6, 59, tzinfo=UTC), ["{}"] * 2, pod="b"),
    ]
    kept = [
        write_batch(tmp_path, datetime(2026, 12, 7, 7, 0, tzinfo=UTC), ["{}"] * 4),
        write_batch(tmp_path, datetime(2026, 12, 7, 9, 0, tzinfo=UTC), ["{}"] * 5),
    ]
    stray = gone[0].parent / "notes.txt"
    stray.write_text("not a batch")
    store = capturestore.DirectoryStore(tmp_path)

    report = capturestore.retain(store, ROOT, timedelta(hours=2), NOW)

    assert [p.exists() for p in gone] == [False, False]
    assert [p.exists() for p in kept] == [True, True]
    assert stray.exists()  # never deleted: not a batch
    assert not gone[1].parent.exists()  # the emptied hour's folder goes too
    assert report == capturestore.RetentionReport(
        deleted_batches=2,
        deleted_records=5,
        kept_batches=2,
        kept_records=9,
        kept_bytes=sum(p.stat().st_size for p in kept),
        time=NOW,
    )
    assert json.loads(report.line()) == {
        "deletedBatches": 2,
        "deletedRecords": 5,
        "keptBatches": 2,
        "keptRecords": 9,
        "keptBytes": report.kept_bytes,
        "time": "2026-12-07T10:00:00Z",
    }
    again = capturestore.retain(store, ROOT, timedelta(hours=2), NOW)
    assert (again.deleted_batches, again.kept_records) == (0, 9)


def test_a_store_config_names_the_resource_and_its_store() -> None:
    text = "kind: InferenceModel\nnamespace: ml\nname: llama-8b\nstore: {directory: /data/c}\n"
    config = capturestore.load_store_config(text, "f.yaml")
    assert capturestore.root(config) == "ml/inferencemodel/llama-8b"
    assert config.store.directory == "/data/c"

    s3 = json.dumps(
        {
            "source": {"kind": "RoutingPolicy", "namespace": "ml", "name": "a", "component": "r"},
            "store": {"s3": {"bucket": "cap", "prefix": "p/q"}},
        }
    )
    config = capturestore.load_store_config(s3, "capture.json")
    assert capturestore.root(config) == "p/q/ml/routingpolicy/a"

    with pytest.raises(capturestore.CaptureError, match=r"^bad\.yaml: not a capture store"):
        capturestore.load_store_config("kind: Pod\n", "bad.yaml")


def test_a_volume_store_is_read_only_where_it_is_mounted(tmp_path: Path) -> None:
    spec = Store.model_validate({"pvc": {"claimName": "capture-data", "prefix": "cap"}})
    with pytest.raises(capturestore.CaptureError) as raised:
        capturestore.location(spec, None, "RoutingPolicy ml/assistant")
    message = str(raised.value)
    assert "PersistentVolumeClaim capture-data" in message
    assert "--directory" in message
    mounted = capturestore.location(spec, str(tmp_path), "RoutingPolicy ml/assistant")
    assert mounted.directory == str(tmp_path / "cap")

    bucket = Store.model_validate({"s3": {"bucket": "cap", "endpoint": "http://minio:9000"}})
    found = capturestore.location(bucket, None, "RoutingPolicy ml/assistant")
    assert found.s3 == S3Location(
        bucket="cap", prefix="specfleet/capture", endpoint="http://minio:9000"
    )


# S3, through botocore's Stubber: the calls and their parameters, no server.


@pytest.fixture
def s3() -> Any:
    return boto3.client(
        "s3",
        region_name="us-east-1",
        endpoint_url="http://minio.storage.svc:9000",
        aws_access_key_id="id",
        aws_secret_access_key="secret",
    )


def s3_store(client: Any) -> capturestore.S3Store:
    location = S3Location(bucket="cap", endpoint="http://minio.storage.svc:9000")
    return capturestore.S3Store(location, client=client, credentials_from="Secret ml/s3")


def test_s3_listing_follows_every_page(s3: Any) -> None:
    key = BatchKey(T0, "router", "p", 0, 2).name(ROOT)
    with Stubber(s3) as stub:
        stub.add_response(
            "list_objects_v2",
            {
                "Contents": [{"Key": key, "Size": 11}],
                "IsTruncated": True,
                "NextContinuationToken": "t",
            },
            {"Bucket": "cap", "Prefix": f"{ROOT}/"},
        )
        stub.add_response(
            "list_objects_v2",
            {"Contents": [{"Key": f"{ROOT}/x.txt", "Size": 1}], "IsTruncated": False},
            {"Bucket": "cap", "Prefix": f"{ROOT}/", "ContinuationToken": "t"},
        )
        batches = capturestore.list_batches(s3_store(s3), ROOT)
        stub.assert_no_pending_responses()
    assert [(b.path, b.size, b.key.records) for b in batches] == [(key, 11, 2)]


def test_s3_deletes_in_chunks_of_a_thousand(s3: Any) -> None:
    keys = [f"k{i}" for i in range(2500)]
    with Stubber(s3) as stub:
        for start, end in ((0, 1000), (1000, 2000), (2000, 2500)):
            objects = [{"Key": k} for k in keys[start:end]]
            stub.add_response(
                "delete_objects",
                {},
                {"Bucket": "cap", "Delete": {"Objects": objects, "Quiet": True}},
            )
        s3_store(s3).delete(keys)
        stub.assert_no_pending_responses()


def test_s3_objects_not_deleted_are_an_error(s3: Any) -> None:
    with Stubber(s3) as stub:
        stub.add_response(
            "delete_objects",
            {"Errors": [{"Key": "k1", "Code": "AccessDenied", "Message": "no"}]},
        )
        with pytest.raises(capturestore.CaptureError, match=r"1 of 2 batches not deleted.*k1"):
            s3_store(s3).delete(["k0", "k1"])


@pytest.mark.parametrize(
    ("code", "says"),
    [
        ("NoSuchBucket", "bucket cap does not exist at http://minio.storage.svc:9000"),
        ("AccessDenied", "access to bucket cap .* denied .* credentials from Secret ml/s3"),
    ],
)
def test_s3_errors_say_what_is_wrong(s3: Any, code: str, says: str) -> None:
    with Stubber(s3) as stub:
        stub.add_client_error("list_objects_v2", service_error_code=code, http_status_code=403)
        with pytest.raises(capturestore.CaptureError, match=says):
            capturestore.list_batches(s3_store(s3), ROOT)
