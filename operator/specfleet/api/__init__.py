"""The specfleet API: the InferenceModel and RoutingPolicy resources, defined once.

Everything about the resources' shape comes from these models: the CRDs (`specfleet.crdgen`),
the operator's parsing of every body it receives, and offline validation of manifests.
"""

from specfleet.api.crdinfo import API_VERSION, GROUP, VERSION
from specfleet.api.inferencemodel import InferenceModel, InferenceModelSpec, InferenceModelStatus
from specfleet.api.manifests import ManifestError, Resource, load, parse
from specfleet.api.routingpolicy import RoutingPolicy, RoutingPolicySpec, RoutingPolicyStatus

RESOURCES = (InferenceModel, RoutingPolicy)
"""Every custom resource specfleet defines."""

__all__ = [
    "API_VERSION",
    "GROUP",
    "RESOURCES",
    "VERSION",
    "InferenceModel",
    "InferenceModelSpec",
    "InferenceModelStatus",
    "ManifestError",
    "Resource",
    "RoutingPolicy",
    "RoutingPolicySpec",
    "RoutingPolicyStatus",
    "load",
    "parse",
]
