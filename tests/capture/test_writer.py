"""The writer: batches in the store as BatchKey names them, a full queue, a failing store.

Waits are on conditions (events the fake stores set), never on time.
"""

from __future__ import annotations

import gzip
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from specfleet.api.capture import BatchKey, resource_root
from specfleet_runtime.capture import Capture, CaptureMetrics, store, writer
from specfleet_runtime.capture import batches as batching
from tests.capture.builders import chat_exchange, config

DEADLINE = 10.0
T0 = 1_796_620_000.0  # 2026-12-07T05:06:40Z


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.capture = CaptureMetrics(self.registry)

    def value(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def dropped(self, reason: str) -> float:
        return self.value("specfleet_capture_records_dropped_total", reason=reason)

    @property
    def written(self) -> float:
        return self.value("specfleet_capture_records_written_total")

    @property
    def queued(self) -> float:
        return self.value("specfleet_capture_queue_records")


def capture(
    metrics: Metrics,
    *,
    into: store.Store | None = None,
    tmp: Path | None = None,
    writer_process: bool = False,
    **changes: Any,
) -> Capture:
    return Capture(
        config(tmp, **changes),
        pod="router-abc-1",
        metrics=metrics.capture,
        environ={"SPECFLEET_CAPTURE_HASH_KEY": "test-key"},
        writer_process=writer_process,
        store=into,
        clock=lambda: T0,
    )


def batches(directory: Path) -> dict[str, list[dict[str, Any]]]:
    return {
        str(path.relative_to(directory)): [
            json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()
        ]
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def test_batches_land_in_the_directory_named_as_batch_keys(tmp_path: Path) -> None:
    metrics = Metrics()
    capturing = capture(metrics, tmp=tmp_path, flushRecords=2)
    for n in range(5):
        capturing.offer(chat_exchange(f"req-{n}"))
    assert capturing.close(DEADLINE)
    found = batches(tmp_path)
    root = resource_root("", "RoutingPolicy", "team-a", "assistant")
    assert sorted(len(records) for records in found.values()) == [1, 2, 2]
    assert sorted(r["id"] for records in found.values() for r in records) == [
        f"req-{n}" for n in range(5)
    ]
    seqs = set()
    for name, records in found.items():
        assert name.startswith(root + "/date=2026-12-07/hour=05/router-router-abc-1-")
        key = BatchKey.parse(name)
        assert key is not None, name
        assert (key.component, key.pod, key.records) == ("router", "router-abc-1", len(records))
        assert key.name(root) == name
        seqs.add(key.seq)
    assert len(seqs) == 3
    assert metrics.written == 5
    assert metrics.queued == 0
    assert not list(tmp_path.rglob(".*")), "no temporary file is left"


def test_a_batch_is_written_on_its_own_once_flush_records_wait(tmp_path: Path) -> None:
    written = threading.Event()

    class Signalling(store.DirectoryStore):
        def put(self, name: str, data: bytes) -> None:
            super().put(name, data)
            written.set()

    capturing = capture(Metrics(), into=Signalling(tmp_path), flushRecords=3, flushSeconds=3600)
    try:
        for n in range(3):
            capturing.offer(chat_exchange(f"req-{n}"))
        assert written.wait(DEADLINE), "three records waited, yet no batch was written"
        (records,) = batches(tmp_path).values()
        assert [r["id"] for r in records] == ["req-0", "req-1", "req-2"]
    finally:
        capturing.close(DEADLINE)


class Blocking:
    """A store whose first put waits until the test releases it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.names: list[str] = []

    def put(self, name: str, data: bytes) -> None:
        self.entered.set()
        assert self.release.wait(DEADLINE)
        self.names.append(name)


def test_a_full_queue_drops_and_counts_without_waiting_for_the_writer() -> None:
    metrics = Metrics()
    blocking = Blocking()
    capturing = capture(metrics, into=blocking, flushRecords=1, queueRecords=3)
    try:
        capturing.offer(chat_exchange("req-first"))
        assert blocking.entered.wait(DEADLINE)  # the writer is stuck in the store now
        for n in range(5):
            capturing.offer(chat_exchange(f"req-{n}"))
        # Returned while the writer is still stuck: three queued, two dropped.
        assert not blocking.release.is_set()
        assert metrics.queued == 3
        assert metrics.dropped("queue_full") == 2
        blocking.release.set()
        assert capturing.close(DEADLINE)
    finally:
        blocking.release.set()
    assert len(blocking.names) == 4
    assert metrics.written == 4
    assert metrics.queued == 0


class Failing:
    def __init__(self) -> None:
        self.calls = 0

    def put(self, name: str, data: bytes) -> None:
        self.calls += 1
        raise store.StoreError(f"cannot write {name}: the bucket is gone")


def test_a_failing_store_counts_the_batches_records_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    failing = Failing()
    capturing = capture(metrics, into=failing, flushRecords=2)
    for n in range(6):
        capturing.offer(chat_exchange(f"req-{n}"))
    assert capturing.close(DEADLINE)
    assert failing.calls == 3
    assert metrics.dropped("store_error") == 6
    assert metrics.written == 0
    warnings = [r for r in caplog.records if r.name == batching.log.name]
    assert len(warnings) == 1
    assert "the bucket is gone" in warnings[0].getMessage()


def test_a_record_over_the_cap_is_dropped_and_counted(tmp_path: Path) -> None:
    metrics = Metrics()
    capturing = capture(metrics, tmp=tmp_path, maxRecordBytes=2048)
    body = {"messages": [{"role": "user", "content": f"m{n}"} for n in range(500)]}
    capturing.offer(chat_exchange("req-huge", body=json.dumps(body).encode()))
    capturing.offer(chat_exchange("req-small"))
    assert capturing.close(DEADLINE)
    assert metrics.dropped("too_large") == 1
    (records,) = batches(tmp_path).values()
    assert [r["id"] for r in records] == ["req-small"]


def test_a_directory_that_cannot_be_written_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the directory should be")
    with pytest.raises(store.StoreError, match="cannot write"):
        store.DirectoryStore(blocker).put("a/b.jsonl.gz", b"x")


def test_offers_after_close_are_not_taken(tmp_path: Path) -> None:
    metrics = Metrics()
    capturing = capture(metrics, tmp=tmp_path)
    assert capturing.close(DEADLINE)
    capturing.offer(chat_exchange("late"))
    assert metrics.queued == 0
    assert not batches(tmp_path)


def test_the_hash_key_comes_from_the_environment_or_is_random() -> None:
    assert writer.hash_key({"SPECFLEET_CAPTURE_HASH_KEY": "abc"}) == b"abc"
    assert writer.hash_key({}) != writer.hash_key({})
    assert len(writer.hash_key({})) == 32


def test_the_pod_name_is_the_environments_else_the_host_name() -> None:
    assert writer.pod_name({"POD_NAME": "router-5f6d-x2k"}) == "router-5f6d-x2k"
    name = writer.pod_name({})
    assert name and BatchKey.parse(
        f"date=2026-01-01/hour=00/gate-{name}-20260101T000000Z-0-1.jsonl.gz"
    )
    assert writer.pod_name({"POD_NAME": "My_Host"}) == "my-host"


def test_a_config_file_in_yaml_or_json(tmp_path: Path) -> None:
    path = tmp_path / "capture.json"
    path.write_text(json.dumps({**config(tmp_path).model_dump(by_alias=True), "sampleRate": 0.25}))
    assert writer.load_config(path).sample_rate == 0.25
    path.write_text("sampleRate: 2\n")
    with pytest.raises(ValueError, match="capture config"):
        writer.load_config(path)
