"""The router's configuration file format: the documented example, what the operator can render
from a RoutingPolicy, and the refusals, each saying where."""

from __future__ import annotations

import json
import textwrap

import pytest
import yaml

from specfleet import api
from specfleet.api import routerconfig
from specfleet.api.routerconfig import ConfigError, RouterConfig, parse_config
from specfleet.api.routingpolicy import RoutingPolicy
from tests import corpus
from tests.router.builders import config_data


def documented_example() -> str:
    doc = routerconfig.__doc__
    assert doc is not None
    start = doc.index("holding:\n\n") + len("holding:\n\n")
    return textwrap.dedent(doc[start : doc.index("\n\n", start)])


def test_the_documented_example_is_a_valid_configuration() -> None:
    parsed = parse_config(documented_example())
    assert parsed.policy == "assistant"
    assert [t.name for t in parsed.tiers] == ["simple", "medium", "complex"]
    assert parsed.overrides[0].match.category == "sql"
    assert parsed.backends["llama-8b"].served_model_name == "llama-3.1-8b"
    assert parsed.backends["llama-70b"].ready is False
    assert parsed.api_keys_file == "/etc/specfleet/api-keys"


def test_json_and_yaml_give_the_same_configuration() -> None:
    data = config_data()
    assert parse_config(json.dumps(data)) == parse_config(yaml.safe_dump(data))


def test_the_operator_can_render_it_from_a_routing_policy() -> None:
    """Item 2's path: the spec's tiers, overrides, classifier and fallback cross verbatim."""
    policy = api.load((corpus.ROOT / "examples" / "routing-policy.yaml").read_text())[0]
    assert isinstance(policy, RoutingPolicy)
    spec = policy.spec
    rendered = RouterConfig(
        policy=policy.metadata.name,
        tiers=spec.tiers,
        overrides=spec.overrides,
        classifier=spec.classifier,
        fallback=spec.fallback,
        backends={
            tier.model: routerconfig.Backend(url=f"http://{tier.model}.ml.svc:80", ready=True)
            for tier in spec.tiers
        },
    )
    text = yaml.safe_dump(rendered.model_dump(by_alias=True, exclude_none=True))
    assert parse_config(text) == rendered
    assert "maxComplexity" in text and "apiKeysFile" not in text


def test_defaults() -> None:
    parsed = parse_config(yaml.safe_dump({"policy": "p", "tiers": [{"name": "a", "model": "m"}]}))
    assert parsed.overrides == []
    assert parsed.backends == {}
    assert parsed.fallback.enabled is True
    assert parsed.classifier == "heuristic"
    assert parsed.api_keys_file is None


def test_a_learned_classifier_is_named_by_its_artifacts_path() -> None:
    path = "/etc/specfleet/classifier/classifier.json"
    parsed = parse_config(json.dumps(config_data(classifier={"path": path})))
    assert parsed.classifier == routerconfig.LearnedClassifier(path=path)
    # Written back as the operator would write it, it reads the same.
    text = yaml.safe_dump(parsed.model_dump(by_alias=True, exclude_none=True))
    assert "path: /etc/specfleet/classifier/classifier.json" in text
    assert parse_config(text) == parsed
    assert parse_config(json.dumps(config_data(classifier="heuristic"))).classifier == "heuristic"


def edited(path: str, value: object) -> str:
    data = config_data()
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return yaml.safe_dump(data)


DELETE = object()


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("policy: [", "not YAML or JSON"),
        ("- a list", "expected a mapping"),
        ("", "expected a mapping"),
        (edited("policy", DELETE), "policy: Field required"),
        (edited("tiers", []), "tiers: List should have at least 1 item"),
        (edited("tiers.1.name", "simple"), "every tier name must be unique"),
        (edited("tiers.1.when", DELETE), "every tier but the last needs when"),
        (edited("tiers.2.when", {"maxComplexity": 0.9}), "remove its when"),
        (edited("tiers.0.when.maxComplexity", 1.5), "tiers.0.when.maxComplexity"),
        (edited("tiers.0.cost", 0), "tiers.0.cost"),
        (edited("overrides.0.match", {"category": "poetry"}), "overrides.0.match.category"),
        (
            edited("overrides.0.match", {"pattern": "(unclosed"}),
            "overrides.0.match.pattern: '(unclosed' is not a regular expression",
        ),
        (edited("backends.small.url", None), "backends.small: a backend that is ready needs a url"),
        (edited("backends.small.url", "https://small:443"), "backends.small.url"),
        (edited("backends.small.url", "small:80"), "backends.small.url"),
        (edited("backends.small.ready", "yes"), "backends.small.ready"),
        (edited("tier", []), "tier: Extra inputs are not permitted"),
        (edited("classifier", "learned"), "classifier.heuristic: Input should be 'heuristic'"),
        (edited("classifier", {"path": ""}), "classifier.learned.path: String should"),
        (edited("classifier", {"file": "/x"}), "classifier.learned.path: Field required"),
    ],
)
def test_refused_configurations_say_where(text: str, error: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(text)
    assert error in str(refused.value)
