"""The S3 store against botocore's own stubbed client (no network): one object per batch,
under the bucket's prefix, and a refusal turned into a StoreError."""

from __future__ import annotations

import pytest
from botocore.stub import Stubber

from specfleet.api.capture import BatchKey, CaptureSource, StoreLocation
from specfleet_runtime.capture import store

SOURCE = CaptureSource(kind="InferenceModel", namespace="ml", name="llama-8b", component="gate")


def test_batches_go_under_the_prefix_as_one_object_each() -> None:
    location = StoreLocation.model_validate(
        {
            "s3": {
                "bucket": "traffic",
                "prefix": "specfleet/capture",
                "endpoint": "http://minio:9000",
            }
        }
    )
    root = store.batch_root(location, SOURCE)
    assert root == "specfleet/capture/ml/inferencemodel/llama-8b"
    s3 = store.open_store(location)
    assert isinstance(s3, store.S3Store)
    assert s3.client.meta.endpoint_url == "http://minio:9000"
    name = f"{root}/date=2026-12-07/hour=05/gate-llama-8b-0-20261207T050640Z-0-2.jsonl.gz"
    with Stubber(s3.client) as stub:
        stub.add_response(
            "put_object",
            {},
            {"Bucket": "traffic", "Key": name, "Body": b"batch", "ContentType": "application/gzip"},
        )
        s3.put(name, b"batch")
        stub.add_client_error("put_object", "NoSuchBucket", http_status_code=404)
        with pytest.raises(store.StoreError, match=r"s3://traffic/.*NoSuchBucket"):
            s3.put(name, b"batch")
    assert BatchKey.parse(name) is not None


def test_a_directory_store_is_rooted_at_the_mounted_directory() -> None:
    location = StoreLocation.model_validate({"directory": "/capture"})
    assert store.batch_root(location, SOURCE) == "ml/inferencemodel/llama-8b"
    opened = store.open_store(location)
    assert isinstance(opened, store.DirectoryStore)
    assert str(opened.directory) == "/capture"
