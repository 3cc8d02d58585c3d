"""Capturing a resource's own traffic: the spec a RoutingPolicy or InferenceModel carries, the
file the operator renders for the pods that capture (the router, the gate), the record they
write, and where in the store each batch of records goes.

The spec (`CaptureSpec`, `spec.capture` on both kinds) is opt-in: absent, nothing is kept. When
present it says how many requests to keep (`sampleRate`, decided per request from its request
ID before anything is copied), what to keep (`keep`), what to redact beyond the built-in
detectors (`redaction.patterns`), how large a record may be, how long records are kept
(`retention`), and the store: an S3-compatible bucket (credentials only by Secret reference) or
a PersistentVolumeClaim.

The operator turns the spec into a `CaptureConfig`, the file the router reads (inside its own
configuration, `specfleet.api.routerconfig`) and the gate reads (`--capture-config`), naming the
resource the records come from. Credentials never enter the file: the pods get them as
environment variables from the Secret (`S3_CREDENTIAL_ENV`, `HASH_KEY_ENV`).

Records are JSON objects, one per line, gzip-compressed, a batch per object (`RECORD_SCHEMA`
names their version). Batches are partitioned by the hour they were written in, under one root
per resource (`resource_root`):

    <prefix>/<namespace>/<kind>/<name>/date=2026-12-07/hour=06/<component>-<pod>-<time>-<seq>-<records>.jsonl.gz

so listing a resource, a time slice of it, or what retention must delete needs no object read
(`BatchKey`: the writer names a batch with `name`, readers parse it back with `parse`).

Pure. Used by the operator (rendering, `specfleet capture`, retention) and by
`specfleet_runtime.capture` (the writer).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Literal, Self

import pydantic
from pydantic import Field, StringConstraints

from specfleet.api.base import ApiModel, Rule, StatusModel
from specfleet.api.common import Duration

RECORD_SCHEMA = "specfleet.capture/v1"
"""The `schema` field of every record this version writes."""

S3_CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
"""The environment variables the pods get the S3 credentials in, from the Secret keys of the
same names (what every S3 tool reads)."""
HASH_KEY_ENV = "SPECFLEET_CAPTURE_HASH_KEY"
"""The environment variable holding the key of the keyed hashes (credentials, caller identity)."""

SecretName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253),
]
"""The name of a Secret in the resource's namespace."""


class SecretKeyRef(ApiModel):
    """One key of a Secret in the resource's namespace."""

    name: SecretName
    """The Secret."""
    key: Annotated[str, StringConstraints(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)]
    """The key within it."""


class S3Store(ApiModel):
    """An S3-compatible bucket."""

    bucket: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")]
    """The bucket; it must exist (the operator says so in a condition when it does not)."""
    prefix: Annotated[
        str, StringConstraints(pattern=r"^([^/\s]+(/[^/\s]+)*)?$", max_length=256)
    ] = "specfleet/capture"
    """Where in the bucket the records go, without a leading or trailing slash."""
    endpoint: (
        Annotated[str, StringConstraints(pattern=r"^https?://[^/\s]+/?$", max_length=256)] | None
    ) = None
    """The S3 endpoint, such as `http://minio.storage.svc:9000`. Unset: AWS S3 in `region`."""
    region: Annotated[str, StringConstraints(min_length=1, max_length=64)] = "us-east-1"
    """The bucket's region."""
    credentials_secret: SecretName | None = None
    """A Secret holding `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, given to the pods that
    write and read the store. Unset: the pods' own identity (for example a ServiceAccount
    bound to a cloud role)."""


class VolumeStore(ApiModel):
    """A PersistentVolumeClaim in the resource's namespace, mounted by the pods that capture; it
    must allow ReadWriteMany when more than one pod writes to it."""

    claim_name: SecretName
    """The PersistentVolumeClaim."""
    prefix: Annotated[
        str, StringConstraints(pattern=r"^([^/\s]+(/[^/\s]+)*)?$", max_length=256)
    ] = "specfleet/capture"
    """The directory on the volume the records go under."""


class Store(ApiModel):
    """Where captured records are written: exactly one of `s3` and `pvc`."""

    rules = (
        Rule(
            cel="has(self.s3) != has(self.pvc)",
            message="capture.store needs exactly one of s3 (a bucket) and pvc (a claim)",
            check=lambda store: (store.s3 is None) != (store.pvc is None),
        ),
    )

    s3: S3Store | None = None
    """An S3-compatible bucket."""
    pvc: VolumeStore | None = None
    """A PersistentVolumeClaim."""


class RedactionPattern(ApiModel):
    """A pattern of the team's own to redact, such as ticket or account numbers."""

    name: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
    """What the match is replaced by, as `[name]`, and counted under in the record."""
    regex: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    """A Python regular expression; a match anywhere in a string of the request or response is
    replaced."""

    @pydantic.field_validator("regex")
    @classmethod
    def _compiles(cls, regex: str) -> str:
        try:
            compiled = re.compile(regex)
        except re.error as exc:
            raise ValueError(f"redaction pattern {regex!r} does not compile: {exc}") from None
        if compiled.match(""):
            raise ValueError(f"redaction pattern {regex!r} matches the empty string")
        return regex


class Redaction(ApiModel):
    """What is redacted before a record leaves the pod, besides the built-in detectors (e-mail
    addresses, phone and card numbers, API keys and bearer tokens), which always run."""

    patterns: list[RedactionPattern] = Field(default_factory=list, max_length=32)
    """The team's own patterns, applied after the built-in ones."""
    hash_key_secret: SecretKeyRef | None = None
    """The key of the keyed hash that stands in for the client's credentials and the caller's
    identity (`user`), so records of one caller can be grouped without naming it. Unset: each
    pod draws a random key when it starts, so hashes match only within one pod's lifetime."""


class CaptureSpec(ApiModel):
    """Opt-in capture of the traffic this resource serves, for training and evaluation."""

    sample_rate: Annotated[float, Field(gt=0.0, le=1.0)]
    """The share of requests kept, such as 0.05; decided per request from its request ID, before
    anything is copied, so a request is kept by all or none of the pods it crosses."""
    keep: Literal["Requests", "RequestsAndResponses"] = "Requests"
    """Whether a record holds the request only, or the response too (a streamed response is
    reassembled from its chunks, never delaying one). Every record holds the route decision,
    token counts, latencies, status and fallback."""
    store: Store
    """Where the records go."""
    redaction: Redaction = Redaction()
    """Redaction beyond the built-in detectors, and the keyed hash."""
    max_record_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 256 * 1024
    """The largest record kept: longer request or response texts are cut (the record says so)
    and a record still over it is dropped and counted."""
    retention: Duration = Duration("720h")
    """How long records are kept: a CronJob the operator owns deletes older hours every hour."""
    queue_records: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    """Records waiting to be written, per pod; when it is full a record is dropped and counted,
    never waited for."""


class CaptureSource(ApiModel):
    """The resource, and the component of it, whose traffic a pod captures."""

    kind: Literal["RoutingPolicy", "InferenceModel"]
    namespace: Annotated[str, StringConstraints(min_length=1)]
    name: Annotated[str, StringConstraints(min_length=1)]
    component: Literal["router", "gate"]


class S3Location(ApiModel):
    """Where an S3 store is, as the pods reach it (credentials come from the environment)."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str = "us-east-1"


class StoreLocation(ApiModel):
    """An S3 bucket or a directory (where a PersistentVolumeClaim is mounted): exactly one."""

    s3: S3Location | None = None
    directory: Annotated[str, StringConstraints(pattern=r"^/")] | None = None

    @pydantic.model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.s3 is None) == (self.directory is None):
            raise ValueError("a capture store is exactly one of s3 and directory")
        return self


class CaptureConfig(ApiModel):
    """What a pod that captures reads: the spec, resolved for this pod's resource and store."""

    source: CaptureSource
    sample_rate: Annotated[float, Field(gt=0.0, le=1.0)]
    keep: Literal["Requests", "RequestsAndResponses"] = "Requests"
    store: StoreLocation
    patterns: list[RedactionPattern] = Field(default_factory=list)
    max_record_bytes: Annotated[int, Field(ge=1024)] = 256 * 1024
    queue_records: Annotated[int, Field(ge=1)] = 10_000
    flush_seconds: Annotated[float, Field(gt=0.0)] = 10.0
    """A batch is written at least this often while records wait."""
    flush_records: Annotated[int, Field(ge=1)] = 1_000
    """... or as soon as this many wait."""


KINDS = {"RoutingPolicy": "routingpolicy", "InferenceModel": "inferencemodel"}
"""A kind as it appears in store paths."""


def resource_root(prefix: str, kind: str, namespace: str, name: str) -> str:
    """The path under which one resource's batches go (no trailing slash)."""
    parts = [prefix] if prefix else []
    return "/".join([*parts, namespace, KINDS[kind], name])


_BATCH = re.compile(
    r"date=(?P<date>\d{4}-\d{2}-\d{2})/hour=(?P<hour>\d{2})/"
    r"(?P<component>router|gate)-(?P<pod>[-a-z0-9.]+)-(?P<time>\d{8}T\d{6}Z)-"
    r"(?P<seq>\d+)-(?P<records>\d+)\.jsonl\.gz$"
)


@dataclass(frozen=True)
class BatchKey:
    """One batch of records: who wrote it, when, and how many records it holds."""

    written: datetime
    component: str
    pod: str
    seq: int
    records: int

    @property
    def hour(self) -> datetime:
        """The start of the hour the batch belongs to (its partition)."""
        return self.written.replace(minute=0, second=0, microsecond=0)

    def name(self, root: str) -> str:
        """The batch's path under a resource's root."""
        written = self.written.astimezone(UTC)
        return (
            f"{root}/date={written:%Y-%m-%d}/hour={written:%H}/"
            f"{self.component}-{self.pod}-{written:%Y%m%dT%H%M%SZ}-{self.seq}-{self.records}"
            ".jsonl.gz"
        )

    @classmethod
    def parse(cls, path: str) -> BatchKey | None:
        """The batch a path names, or None when the path is not a batch this version writes."""
        match = _BATCH.search(path)
        if match is None:
            return None
        written = datetime.strptime(match["time"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        return cls(
            written=written,
            component=match["component"],
            pod=match["pod"],
            seq=int(match["seq"]),
            records=int(match["records"]),
        )


class CaptureStatus(StatusModel):
    """What the resource's pods captured and what the store keeps, as the operator last saw."""

    captured: int | None = None
    """Records written to the store since the pods started (from their metrics)."""
    dropped: dict[str, int] = Field(default_factory=dict)
    """Records not written, by reason: `queue_full`, `store_error`, `too_large`."""
    kept_records: int | None = None
    """Records in the store after retention last ran."""
    kept_bytes: int | None = None
    """Their compressed size."""
    last_retention_time: datetime | None = None
    """When retention last completed."""
