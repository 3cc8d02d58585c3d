"""The committed CRDs are exactly what the generator writes, and are structural schemas with
the names, columns, subresources and rules the design promises."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import yaml

from specfleet import crdgen
from specfleet.api import RESOURCES, InferenceModel, RoutingPolicy
from tests.corpus import ROOT

CRD_DIR = ROOT / "crds"


def _schema(model: type[InferenceModel] | type[RoutingPolicy]) -> dict[str, Any]:
    schema: dict[str, Any] = crdgen.crd(model)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _nodes(node: Mapping[str, Any], where: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    yield where, node
    for name, child in node.get("properties", {}).items():
        yield from _nodes(child, f"{where}.{name}")
    if "items" in node:
        yield from _nodes(node["items"], f"{where}[]")
    if isinstance(node.get("additionalProperties"), Mapping):
        yield from _nodes(node["additionalProperties"], f"{where}{{}}")


@pytest.mark.parametrize("model", RESOURCES, ids=lambda m: m.__name__)
def test_committed_crd_matches_a_fresh_generation(
    model: type[InferenceModel] | type[RoutingPolicy],
) -> None:
    committed = CRD_DIR / crdgen.file_name(model)
    assert committed.read_text() == crdgen.render(model), (
        f"{committed} is stale: run `specfleet crds --write crds`"
    )


@pytest.mark.parametrize("model", RESOURCES, ids=lambda m: m.__name__)
def test_a_crd_spells_every_node_out_without_yaml_aliases(
    model: type[InferenceModel] | type[RoutingPolicy],
) -> None:
    # A shared definition (two fields of one type) must be written twice, not as &id001/*id001,
    # which some GitOps tools and every reader trip over.
    events = yaml.parse(crdgen.render(model))
    assert not [e for e in events if isinstance(e, yaml.AliasEvent)]
    assert not [e for e in events if getattr(e, "anchor", None)]


def test_crds_print_as_one_multi_document_stream() -> None:
    documents = list(yaml.safe_load_all(crdgen.render_all()))
    assert [d["spec"]["names"]["kind"] for d in documents] == ["InferenceModel", "RoutingPolicy"]


@pytest.mark.parametrize("model", RESOURCES, ids=lambda m: m.__name__)
def test_schema_is_structural(model: type[InferenceModel] | type[RoutingPolicy]) -> None:
    for where, node in _nodes(_schema(model)):
        assert "$ref" not in node and "allOf" not in node, where
        if node.get("x-kubernetes-int-or-string"):
            continue
        assert "type" in node, f"{where} has no type"
        assert "anyOf" not in node, where
        if node["type"] == "object" and where != ".metadata":
            assert "properties" in node or "additionalProperties" in node, where


@pytest.mark.parametrize("model", RESOURCES, ids=lambda m: m.__name__)
def test_every_spec_and_status_field_is_documented(
    model: type[InferenceModel] | type[RoutingPolicy],
) -> None:
    schema = _schema(model)
    for part in ("spec", "status"):
        for where, node in _nodes(schema["properties"][part], part):
            if where.endswith(("[]", "{}")):
                continue
            assert node.get("description"), f"{model.__name__}.{where} has no description"


def test_names_subresources_and_columns() -> None:
    im = crdgen.crd(InferenceModel)["spec"]
    rp = crdgen.crd(RoutingPolicy)["spec"]
    assert im["group"] == rp["group"] == "specfleet.dev"
    assert im["names"]["shortNames"] == ["im"] and rp["names"]["shortNames"] == ["rp"]
    assert im["names"]["categories"] == rp["names"]["categories"] == ["specfleet"]
    version = im["versions"][0]
    assert version["name"] == "v1alpha1"
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    assert "status" in rp["versions"][0]["subresources"]
    assert "scale" not in rp["versions"][0]["subresources"]
    im_columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert im_columns == (
        ["Model", "GPUs", "Replicas", "Limit", "Acceptance", "P99", "Latency", "Ready", "Age"]
    )
    rp_columns = [c["name"] for c in rp["versions"][0]["additionalPrinterColumns"]]
    assert rp_columns == ["Tiers", "Backends", "Ready", "Age"]


def test_column_paths_exist_in_the_schema() -> None:
    for model in RESOURCES:
        schema = _schema(model)
        for column in model.crd.printer_columns:
            node: Mapping[str, Any] = schema
            path = re.sub(r"\[[^\]]*\]", "[]", column.json_path)
            for part in path.split(".")[1:]:
                name = part.split("[")[0]
                if node is schema and name == "metadata":
                    break
                node = node["properties"][name]
                if "[" in part:
                    node = node["items"]


def test_bounds_enums_and_defaults_reach_the_crd() -> None:
    spec = _schema(InferenceModel)["properties"]["spec"]["properties"]
    k = spec["draft"]["properties"]["numSpeculativeTokens"]
    assert (k["minimum"], k["maximum"], k["default"]) == (1, 16, 5)
    assert spec["draft"]["properties"]["method"]["enum"] == [
        "draft_model",
        "eagle",
        "eagle3",
        "mtp",
        "ngram",
    ]
    assert spec["batching"]["default"] == {
        "min": 1,
        "max": 256,
        "averageTokens": 1024,
        "mode": "Live",
    }
    assert spec["batching"]["properties"]["mode"]["default"] == "Live"
    assert spec["gpu"]["properties"]["count"]["x-kubernetes-int-or-string"] is True
    assert _schema(InferenceModel)["required"] == ["spec"]
    assert spec["model"]["required"] == ["name"]


def test_cross_field_rules_are_cel_with_actionable_messages() -> None:
    spec = _schema(InferenceModel)["properties"]["spec"]
    batching_rules = spec["properties"]["batching"]["x-kubernetes-validations"]
    assert {r["rule"] for r in batching_rules} >= {"self.min <= self.max"}
    rp_spec = _schema(RoutingPolicy)["properties"]["spec"]
    assert rp_spec["properties"]["tiers"]["minItems"] == 1
    for model in RESOURCES:
        for where, node in _nodes(_schema(model)):
            for rule in node.get("x-kubernetes-validations", []):
                message = rule["message"]
                assert len(message) > 30, f"{where}: {message!r} says too little"
