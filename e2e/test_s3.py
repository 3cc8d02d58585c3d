"""The cluster's S3-compatible store (e2e/s3.py: SeaweedFS's S3 gateway, a real server) as its
clients use it: boto3 on this host, with the store's keys, puts, lists, gets and deletes an
object; a wrong secret key (or none) is refused, so the keys are enforced; and a pod on the real
node, with the keys from the store's Secret, reaches it at ``pod_endpoint``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from mypy_boto3_s3 import S3Client

from e2e import harness, s3
from e2e.test_real_node import client_pod, run_to_completion

REFUSED = {"AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId"}


def client(store: s3.S3Store, *, endpoint: str = "", secret_key: str = "") -> S3Client:
    """boto3's S3 client for ``store`` (path-style addressing: the endpoint is an address)."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint or store.endpoint,
        aws_access_key_id=store.access_key,
        aws_secret_access_key=secret_key or store.secret_key,
        region_name=store.region,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
        ),
    )


def test_an_object_goes_in_is_listed_comes_back_and_goes(s3_store: s3.S3Store) -> None:
    store = client(s3_store)
    prefix = f"test-s3/{uuid.uuid4().hex}/"
    key = f"{prefix}records.jsonl"
    body = b'{"request": 1}\n{"request": 2}\n'
    store.put_object(Bucket=s3_store.bucket, Key=key, Body=body)

    listed = store.list_objects_v2(Bucket=s3_store.bucket, Prefix=prefix)
    assert [(o["Key"], o["Size"]) for o in listed.get("Contents", [])] == [(key, len(body))]
    assert store.get_object(Bucket=s3_store.bucket, Key=key)["Body"].read() == body

    store.delete_object(Bucket=s3_store.bucket, Key=key)
    assert "Contents" not in store.list_objects_v2(Bucket=s3_store.bucket, Prefix=prefix)
    with pytest.raises(ClientError) as missing:
        store.get_object(Bucket=s3_store.bucket, Key=key)
    assert missing.value.response["Error"]["Code"] == "NoSuchKey"


def test_a_wrong_secret_key_or_none_is_refused(s3_store: s3.S3Store) -> None:
    key = f"test-s3/{uuid.uuid4().hex}/refused"
    wrong = client(s3_store, secret_key=f"not-{s3_store.secret_key}")
    with pytest.raises(ClientError) as put:
        wrong.put_object(Bucket=s3_store.bucket, Key=key, Body=b"nope")
    assert put.value.response["Error"]["Code"] in REFUSED, put.value.response
    with pytest.raises(ClientError) as listing:
        wrong.list_objects_v2(Bucket=s3_store.bucket)
    assert listing.value.response["Error"]["Code"] in REFUSED, listing.value.response
    # Nothing was written, and an unsigned request is refused too.
    right = client(s3_store)
    with pytest.raises(ClientError) as missing:
        right.head_object(Bucket=s3_store.bucket, Key=key)
    assert missing.value.response["Error"]["Code"] in ("404", "NoSuchKey")
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(f"{s3_store.endpoint}/{s3_store.bucket}", timeout=10)
    assert anonymous.value.code == 403


def test_a_pod_on_the_real_node_reaches_the_store_with_the_secrets_keys(
    s3_store: s3.S3Store, cluster: harness.Cluster, namespace: str
) -> None:
    """The pod puts an object and reads it back through URLs presigned for ``pod_endpoint``
    (signed for that address, so the request is the pod's own to that endpoint), with the keys
    in its environment from the store's Secret; this host then reads what the pod wrote."""
    cluster.apply([s3_store.secret_manifest(namespace)])
    key = f"test-s3/{uuid.uuid4().hex}/from-a-pod"
    body = "written by a pod"
    for_pods = client(s3_store, endpoint=s3_store.pod_endpoint)
    params = {"Bucket": s3_store.bucket, "Key": key}
    put_url = for_pods.generate_presigned_url("put_object", Params=params, ExpiresIn=600)
    get_url = for_pods.generate_presigned_url("get_object", Params=params, ExpiresIn=600)
    script = f"""
import os, urllib.request
keys = (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
assert keys == {(s3_store.access_key, s3_store.secret_key)!r}, keys
put = urllib.request.Request({put_url!r}, data={body.encode()!r}, method="PUT")
with urllib.request.urlopen(put, timeout=30) as response:
    print("put", response.status)
with urllib.request.urlopen({get_url!r}, timeout=30) as response:
    print("got", response.read().decode())
"""
    pod = client_pod("s3-client", namespace, script)
    pod["spec"]["containers"][0]["envFrom"] = [{"secretRef": {"name": s3.SECRET_NAME}}]
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    logs = run_to_completion(cluster, namespace, "s3-client")
    assert logs.splitlines() == ["put 200", f"got {body}"], logs
    here = client(s3_store)
    assert here.get_object(Bucket=s3_store.bucket, Key=key)["Body"].read() == body.encode()
    here.delete_object(Bucket=s3_store.bucket, Key=key)
