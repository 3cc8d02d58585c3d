"""Where batches of records go: a directory (a mounted PersistentVolumeClaim) or an S3 bucket.

A ``Store`` takes one whole batch under its name (``specfleet.api.capture.BatchKey.name``, a
path relative to the store's root) and raises ``StoreError`` when it could not keep it; the
writer counts the batch's records as dropped and goes on, so a store never retries for long.
``DirectoryStore`` writes a hidden temporary file beside the batch and renames it, so a reader
never sees half a batch (nor, by its name, the temporary file). ``S3Store`` puts one object per
batch through boto3, whose client finds the credentials the usual way (``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY`` from the Secret, or the pod's own identity) and retries a few times,
within bounded timeouts.

Both also ``get`` a whole object back (None when there is none; StoreError when the store cannot
say): the router reads the learning loop's classifier in force so
(``specfleet_runtime.router.inforce``).

``open_store`` builds the store a ``StoreLocation`` names, ``batch_root`` the path in it under
which this resource's batches go (``specfleet.api.capture.resource_root``). Called by
``specfleet_runtime.capture.batches`` where the writing happens (the capture's writer process,
or its thread), never on the request path (building an S3 client takes a while).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from specfleet.api.capture import CaptureSource, StoreLocation, resource_root

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class StoreError(Exception):
    """A batch could not be written; the message says where and why."""


class Store(Protocol):
    """Keeps whole batches under names relative to the resource's root."""

    def put(self, name: str, data: bytes) -> None:
        """Keep ``data`` under ``name``; raises StoreError if it could not."""
        ...


class Reader(Protocol):
    """Reads whole objects under names relative to the store's root."""

    def get(self, name: str, most: int) -> bytes | None:
        """At most ``most`` bytes of what is under ``name``; None when nothing is; raises
        StoreError if the store cannot say."""
        ...


class DirectoryStore:
    """Batches as files under a directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def put(self, name: str, data: bytes) -> None:
        path = self.directory / name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(data)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temporary, path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc

    def get(self, name: str, most: int) -> bytes | None:
        path = self.directory / name
        try:
            with path.open("rb") as file:
                return file.read(most)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc


class S3Store:
    """Batches as objects in an S3-compatible bucket, each name its key."""

    def __init__(self, client: S3Client, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def put(self, name: str, data: bytes) -> None:
        key = name
        # botocore's own errors and the connection's: the store failed, whatever the cause.
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType="application/gzip"
            )
        except Exception as exc:
            raise StoreError(f"cannot put s3://{self.bucket}/{key}: {exc}") from exc

    def get(self, name: str, most: int) -> bytes | None:
        try:
            found = self.client.get_object(
                Bucket=self.bucket, Key=name, Range=f"bytes=0-{most - 1}"
            )
            data: bytes = found["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None
        except Exception as exc:
            raise StoreError(f"cannot get s3://{self.bucket}/{name}: {exc}") from exc
        return data


def open_store(location: StoreLocation) -> DirectoryStore | S3Store:
    """The store ``location`` names."""
    if location.directory is not None:
        return DirectoryStore(Path(location.directory))
    assert location.s3 is not None  # StoreLocation holds exactly one
    return S3Store(s3_client(location.s3.endpoint, location.s3.region), location.s3.bucket)


def batch_root(location: StoreLocation, source: CaptureSource) -> str:
    """The path, relative to the store, under which ``source``'s batches go: the bucket's
    prefix for S3; a directory store is already where the PersistentVolumeClaim's prefix is
    mounted."""
    prefix = location.s3.prefix if location.s3 is not None else ""
    return resource_root(prefix, source.kind, source.namespace, source.name)


def s3_client(endpoint: str | None, region: str) -> S3Client:
    """A client with bounded timeouts and a few retries (a batch is dropped after them)."""
    import boto3  # noqa: PLC0415 - slow to import; only pods with an S3 store need it
    from botocore.config import Config  # noqa: PLC0415

    config = Config(
        connect_timeout=5,
        read_timeout=30,
        retries={"max_attempts": 3, "mode": "standard"},
    )
    return boto3.client("s3", endpoint_url=endpoint, region_name=region, config=config)
