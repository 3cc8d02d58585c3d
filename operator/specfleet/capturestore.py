"""Reading back what capture wrote: listing a resource's batches, streaming their records, and
retention, over an S3-compatible bucket or a local directory (where a PersistentVolumeClaim is
mounted).

The store's layout is `specfleet.api.capture`'s (`resource_root`, `BatchKey`): a batch's path
says when it was written and how many records it holds, so listing, slicing by time and
deciding what retention deletes read no object; only records themselves are read, one line at a
time, never a whole store in memory.

What is decided is pure (`between`, `expired`, `matches`, `hour_rows`); the I/O is the `Store`
protocol's calls, which `S3Store` (boto3) and `DirectoryStore` implement and tests fake
with a directory. Used by `specfleet capture` (ls, show, export, retain); retain also runs in the
CronJob the operator owns, from a `StoreConfig` file and credentials in the environment.
`specfleet router labels` keeps a policy's labelled requests in the same store
(`specfleet.learn.labelstore`), and `specfleet router learn` its cursor, artifacts and
decisions (`specfleet.api.storelayout`), the writers here (`Store.put`); they are not
batches, so listing and retention pass them by.
"""

from __future__ import annotations

import gzip
import heapq
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import pydantic
import yaml

from specfleet.api import capture
from specfleet.api.base import ApiModel
from specfleet.api.capture import BatchKey, S3Location, StoreLocation, resource_root

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

HOUR = timedelta(hours=1)
DELETE_CHUNK = 1000
"""The most keys one S3 DeleteObjects call takes."""
LATE = timedelta(minutes=10)
"""How long after its own time a record may be written: a batch is flushed every few seconds,
and retried when the store fails. A batch written up to this long after a time slice ends may
still hold records from within it."""

Record = dict[str, Any]
Kind = Literal["RoutingPolicy", "InferenceModel"]


class CaptureError(Exception):
    """Capture's store cannot be found, reached or read; the message says what to do."""


class Readable(Protocol):
    """An object's bytes, read as they arrive (a file, or S3's streaming body)."""

    def read(self, size: int = -1, /) -> bytes: ...

    def seek(self, offset: int, /) -> object:
        """Not called when reading forward (gzip's reader only needs it to go back)."""
        ...

    def close(self) -> None: ...


class Store(Protocol):
    """The calls capture's readers (and the labels a policy keeps beside its records) need of a
    store. Paths are `/`-separated and relative
    to the bucket or directory."""

    def objects(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(path, size in bytes) of every object under `prefix/`, in no particular order."""
        ...

    def open(self, path: str) -> Readable:
        """One object's bytes, streamed."""
        ...

    def delete(self, paths: Sequence[str]) -> None:
        """Deletes the objects (all of them, or raises CaptureError)."""
        ...

    def put(self, path: str, data: bytes) -> None:
        """Keeps ``data`` whole under ``path`` (a reader never sees part of it), or raises
        CaptureError. Only ``specfleet router labels`` and ``specfleet router learn`` write to
        a store from outside the pods."""
        ...


@dataclass(frozen=True)
class Batch:
    """One batch in the store: where it is, what its name says, and its size."""

    path: str
    key: BatchKey
    size: int


# What a resource is, where its records are kept


class StoreConfig(ApiModel):
    """A resource and its store, for commands that run without access to the cluster (the
    retention CronJob): `{kind, namespace, name, store: {s3: {...}} | {directory: ...}}`.
    Credentials are not in it: S3's come from the environment (`S3_CREDENTIAL_ENV`)."""

    kind: Kind
    namespace: str
    name: str
    store: StoreLocation


def load_store_config(text: str, source: str) -> StoreConfig:
    """A StoreConfig from JSON or YAML text; a pod's capture file (its `source` and `store`) is
    accepted as well. Raises CaptureError naming `source`."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CaptureError(f"{source}: not JSON or YAML: {exc}") from exc
    if isinstance(document, dict) and isinstance(document.get("source"), dict):
        found = document["source"]
        document = {
            "kind": found.get("kind"),
            "namespace": found.get("namespace"),
            "name": found.get("name"),
            "store": document.get("store"),
        }
    try:
        return StoreConfig.model_validate(document)
    except pydantic.ValidationError as exc:
        raise CaptureError(
            f"{source}: not a capture store configuration ({{kind, namespace, name, store: "
            f"{{s3: {{bucket, prefix, endpoint, region}}}} or {{directory: /path}}}}): {exc}"
        ) from exc


def location(store: capture.Store, directory: str | None, resource: str) -> StoreLocation:
    """Where a spec's store is read from outside the pods: its bucket, or `directory` where the
    volume is mounted (the records are under its `prefix` there). A volume cannot be read from
    outside the cluster, so without `directory` a PVC store raises CaptureError."""
    if directory is not None:
        prefix = store.s3.prefix if store.s3 is not None else store.pvc.prefix if store.pvc else ""
        return StoreLocation(directory=str(Path(directory, prefix).resolve()))
    if store.s3 is not None:
        s3 = store.s3
        return StoreLocation(
            s3=S3Location(
                bucket=s3.bucket, prefix=s3.prefix, endpoint=s3.endpoint, region=s3.region
            )
        )
    assert store.pvc is not None  # a Store holds exactly one
    raise CaptureError(
        f"{resource} captures to PersistentVolumeClaim {store.pvc.claim_name}, which cannot "
        "be read from outside the cluster: run specfleet capture in a pod that mounts the "
        "claim and give --directory MOUNT_PATH"
    )


def root(config: StoreConfig) -> str:
    """Where the resource's batches are in its store. A directory already includes the volume
    store's prefix; a bucket's prefix is the S3 location's."""
    prefix = config.store.s3.prefix if config.store.s3 is not None else ""
    return resource_root(prefix, config.kind, config.namespace, config.name)


# Pure decisions


def parse_batches(objects: Iterable[tuple[str, int]]) -> list[Batch]:
    """The batches among listed objects, oldest first (objects that are not batches, such as
    a writer's temporary files, are left out)."""
    found = []
    for path, size in objects:
        key = BatchKey.parse(path)
        if key is not None:
            found.append(Batch(path, key, size))
    found.sort(key=lambda b: (b.key.written, b.path))
    return found


def between(
    batches: Iterable[Batch], since: datetime | None = None, until: datetime | None = None
) -> list[Batch]:
    """The batches written at or after `since` and before `until`."""
    return [
        b
        for b in batches
        if (since is None or b.key.written >= since) and (until is None or b.key.written < until)
    ]


def whole_hours(
    since: datetime | None, until: datetime | None
) -> tuple[datetime | None, datetime | None]:
    """[since, until) widened to whole hours: the start of `since`'s hour, the end of
    `until`'s (unless `until` is on the hour)."""
    first = since.replace(minute=0, second=0, microsecond=0) if since else None
    if until is None:
        return first, None
    floor = until.replace(minute=0, second=0, microsecond=0)
    return first, floor if floor == until else floor + HOUR


def expired(batches: Iterable[Batch], retention: timedelta, now: datetime) -> list[Batch]:
    """The batches retention deletes: those whose hour ended more than `retention` before
    `now` (an hour that ended exactly `retention` ago is kept)."""
    return [b for b in batches if b.key.hour + HOUR + retention < now]


def record_time(record: Mapping[str, Any]) -> datetime | None:
    """A record's `time`, or None when it has none that parses."""
    value = record.get("time")
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def route_of(record: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(tier, model) of a record's route; None for what it does not say."""
    route = record.get("route")
    if not isinstance(route, Mapping):
        return None, None
    tier, model = route.get("tier"), route.get("model")
    return (
        tier if isinstance(tier, str) else None,
        model if isinstance(model, str) else None,
    )


def matches(
    record: Mapping[str, Any],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    tier: str | None = None,
    model: str | None = None,
) -> bool:
    """Whether a record's time is in [since, until) and its route has this tier and model (a
    record without a time is outside any time slice)."""
    if since is not None or until is not None:
        when = record_time(record)
        if when is None or (since is not None and when < since):
            return False
        if until is not None and when >= until:
            return False
    route_tier, route_model = route_of(record)
    return (tier is None or route_tier == tier) and (model is None or route_model == model)


@dataclass
class HourRow:
    """What one hour of a resource holds."""

    hour: datetime
    batches: int = 0
    records: int = 0
    bytes: int = 0
    tiers: set[str] = field(default_factory=set)
    models: set[str] = field(default_factory=set)


def hour_rows(batches: Iterable[Batch]) -> list[HourRow]:
    """Batches grouped by hour, oldest first: counts from the batches' names, bytes from the
    listing (tiers and models are filled in by whoever reads the records)."""
    rows: dict[datetime, HourRow] = {}
    for b in batches:
        row = rows.setdefault(b.key.hour, HourRow(b.key.hour))
        row.batches += 1
        row.records += b.key.records
        row.bytes += b.size
    return [rows[hour] for hour in sorted(rows)]


class RetentionReport(ApiModel):
    """What one retention run did, printed as one JSON line (and the Job pod's termination
    message, which the operator reads into `status.capture`)."""

    deleted_batches: int
    deleted_records: int
    kept_batches: int
    kept_records: int
    kept_bytes: int
    time: datetime
    """When the run decided (its `now`)."""

    def line(self) -> str:
        return self.model_dump_json(by_alias=True)


def retention_report(
    batches: Sequence[Batch], deleted: Sequence[Batch], now: datetime
) -> RetentionReport:
    gone = {b.path for b in deleted}
    kept = [b for b in batches if b.path not in gone]
    return RetentionReport(
        deleted_batches=len(deleted),
        deleted_records=sum(b.key.records for b in deleted),
        kept_batches=len(kept),
        kept_records=sum(b.key.records for b in kept),
        kept_bytes=sum(b.size for b in kept),
        time=now,
    )


# I/O over a Store


def list_batches(
    store: Store, root: str, since: datetime | None = None, until: datetime | None = None
) -> list[Batch]:
    """A resource's batches written in [since, until), oldest first."""
    return between(parse_batches(store.objects(root)), since, until)


def lines(store: Store, batch: Batch) -> Iterator[bytes]:
    """A batch's records as stored, one line each (without its newline), read as they come."""
    raw = store.open(batch.path)
    try:
        with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
            for line in unzipped:
                stripped = line.rstrip(b"\r\n")
                if stripped:
                    yield stripped
    except (OSError, EOFError) as exc:
        raise CaptureError(f"batch {batch.path} is not a complete gzip file: {exc}") from exc
    finally:
        raw.close()


def parse_line(line: bytes, batch: Batch) -> Record:
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise CaptureError(f"batch {batch.path} holds a line that is not JSON: {exc}") from exc
    if not isinstance(record, dict):
        raise CaptureError(f"batch {batch.path} holds a line that is not a JSON object")
    return record


def records(store: Store, batches: Iterable[Batch]) -> Iterator[tuple[bytes, Record]]:
    """Every record of the batches, in order: the line as stored and the record it holds."""
    for batch in batches:
        for line in lines(store, batch):
            yield line, parse_line(line, batch)


def fill_routes(store: Store, batches: Iterable[Batch], rows: Sequence[HourRow]) -> None:
    """Adds the tiers and models the batches' records were routed to, to their hours' rows."""
    by_hour = {row.hour: row for row in rows}
    for batch in batches:
        row = by_hour[batch.key.hour]
        for line in lines(store, batch):
            tier, model = route_of(parse_line(line, batch))
            if tier is not None:
                row.tiers.add(tier)
            if model is not None:
                row.models.add(model)


def find(store: Store, batches: Sequence[Batch], record_id: str) -> Record | None:
    """The record with this `id`, looking at the newest batches first."""
    for batch in reversed(batches):
        for line in lines(store, batch):
            record = parse_line(line, batch)
            if record.get("id") == record_id:
                return record
    return None


def last(store: Store, batches: Sequence[Batch], count: int) -> list[Record]:
    """The `count` newest records by their time, oldest first. Batches are read newest first,
    and reading stops once every record kept is at least as new as the next batch's writing
    (a batch holds no record newer than when it was written)."""
    # A min-heap of the newest seen, by (time, batch, line): ties go to the later batch and line.
    newest: list[tuple[datetime, int, int, Record]] = []
    for index in range(len(batches) - 1, -1, -1):
        batch = batches[index]
        if len(newest) >= count and newest[0][0] >= batch.key.written:
            break
        for number, line in enumerate(lines(store, batch)):
            record = parse_line(line, batch)
            entry = (record_time(record) or batch.key.written, index, number, record)
            if len(newest) < count:
                heapq.heappush(newest, entry)
            elif entry[:3] > newest[0][:3]:
                heapq.heapreplace(newest, entry)
    return [entry[3] for entry in sorted(newest, key=lambda e: e[:3])]


def retain(store: Store, root: str, retention: timedelta, now: datetime) -> RetentionReport:
    """Deletes the resource's batches whose hour ended more than `retention` before `now`."""
    batches = list_batches(store, root)
    doomed = expired(batches, retention, now)
    if doomed:
        store.delete([b.path for b in doomed])
    return retention_report(batches, doomed, now)


# The stores


class DirectoryStore:
    """A local directory, such as where a PersistentVolumeClaim is mounted."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"directory {self.directory}"

    def objects(self, prefix: str) -> Iterator[tuple[str, int]]:
        top = self.directory / prefix
        if not self.directory.is_dir():
            raise CaptureError(
                f"directory {self.directory} does not exist: give where the capture volume is "
                "mounted"
            )
        for folder, _, names in os.walk(top):
            for name in names:
                path = Path(folder, name)
                yield path.relative_to(self.directory).as_posix(), path.stat().st_size

    def open(self, path: str) -> Readable:
        return (self.directory / path).open("rb")

    def put(self, path: str, data: bytes) -> None:
        target = self.directory / path
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # A hidden temporary file renamed into place: a reader sees all of it or nothing.
            fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(data)
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise CaptureError(f"cannot write {target}: {exc.strerror or exc}") from exc

    def delete(self, paths: Sequence[str]) -> None:
        for path in paths:
            target = self.directory / path
            target.unlink(missing_ok=True)
            # The hour's and the day's folders go with their last batch.
            for folder in (target.parent, target.parent.parent):
                try:
                    folder.rmdir()
                except OSError:
                    break


class S3Store:
    """An S3-compatible bucket through boto3. Credentials are the ones given, or else boto3's
    usual chain (the environment, a web identity, an instance role); `credentials_from` names
    where they came from, for error messages."""

    def __init__(
        self,
        location: S3Location,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        credentials_from: str = "the environment",
        client: S3Client | None = None,
    ) -> None:
        self.location = location
        self.credentials_from = credentials_from
        if client is None:
            import boto3  # noqa: PLC0415
            from botocore.config import Config  # noqa: PLC0415

            client = boto3.client(
                "s3",
                endpoint_url=location.endpoint,
                region_name=location.region,
                aws_access_key_id=access_key,
                aws_secret_access_key=secret_key,
                # In-cluster endpoints (MinIO and the like) have no per-bucket host names.
                config=Config(s3={"addressing_style": "path"} if location.endpoint else {}),
            )
        self._client = client

    def __repr__(self) -> str:
        return f"bucket {self.location.bucket} at {self._endpoint()}"

    def _endpoint(self) -> str:
        return self.location.endpoint or f"AWS S3 in {self.location.region}"

    def _error(self, doing: str, exc: Exception) -> CaptureError:
        from botocore.exceptions import ClientError, NoCredentialsError  # noqa: PLC0415

        bucket, endpoint = self.location.bucket, self._endpoint()
        if isinstance(exc, NoCredentialsError):
            return CaptureError(
                f"{doing}: no S3 credentials for bucket {bucket} at {endpoint}: set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the store's credentialsSecret"
            )
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchBucket":
                return CaptureError(
                    f"{doing}: bucket {bucket} does not exist at {endpoint}: create it, or fix "
                    "spec.capture.store.s3 (bucket, endpoint, region)"
                )
            if code in {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"}:
                return CaptureError(
                    f"{doing}: access to bucket {bucket} at {endpoint} denied ({code}) with "
                    f"the credentials from {self.credentials_from}: check them and the "
                    "bucket's policy"
                )
        return CaptureError(f"{doing}: bucket {bucket} at {endpoint}: {exc}")

    def objects(self, prefix: str) -> Iterator[tuple[str, int]]:
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.location.bucket, Prefix=f"{prefix}/"
        )
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    yield item["Key"], item.get("Size", 0)
        except (BotoCoreError, ClientError) as exc:
            raise self._error(f"listing {prefix}/", exc) from exc

    def open(self, path: str) -> Readable:
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        try:
            body: Readable = self._client.get_object(Bucket=self.location.bucket, Key=path)["Body"]
        except (BotoCoreError, ClientError) as exc:
            raise self._error(f"reading {path}", exc) from exc
        return body

    def put(self, path: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        try:
            self._client.put_object(Bucket=self.location.bucket, Key=path, Body=data)
        except (BotoCoreError, ClientError) as exc:
            raise self._error(f"writing {path}", exc) from exc

    def delete(self, paths: Sequence[str]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        for start in range(0, len(paths), DELETE_CHUNK):
            chunk = paths[start : start + DELETE_CHUNK]
            try:
                answer = self._client.delete_objects(
                    Bucket=self.location.bucket,
                    Delete={"Objects": [{"Key": key} for key in chunk], "Quiet": True},
                )
            except (BotoCoreError, ClientError) as exc:
                raise self._error(f"deleting {len(chunk)} batches", exc) from exc
            failed = answer.get("Errors", [])
            if failed:
                first = failed[0]
                raise CaptureError(
                    f"deleting from bucket {self.location.bucket} at {self._endpoint()}: "
                    f"{len(failed)} of {len(chunk)} batches not deleted, such as "
                    f"{first.get('Key')} ({first.get('Code')}: {first.get('Message')})"
                )


def open_store(
    location: StoreLocation,
    *,
    credentials: tuple[str, str] | None = None,
    credentials_from: str = "the environment",
) -> Store:
    """The store a location names; S3 credentials given, or boto3's usual chain."""
    if location.directory is not None:
        return DirectoryStore(location.directory)
    assert location.s3 is not None  # StoreLocation holds exactly one
    access_key, secret_key = credentials or (None, None)
    return S3Store(
        location.s3,
        access_key=access_key,
        secret_key=secret_key,
        credentials_from=credentials_from,
    )
