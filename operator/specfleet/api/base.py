"""The base every API model derives from, and cross-field rules declared once.

Owns how specfleet's custom resources look on the wire: camelCase names, field docs taken from
attribute docstrings (they become the CRD's descriptions), unknown fields refused.

A cross-field check is a `Rule`: a CEL expression that the API server enforces at admission
(`crdgen` writes it into the CRD as `x-kubernetes-validations`) and the same check in Python,
run whenever pydantic validates a manifest (so `specfleet` commands and the operator refuse what
the API server refuses, without a cluster). The two forms sit side by side in one declaration,
and the bad-manifest corpus in tests/ runs through both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, GetJsonSchemaHandler, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema


@dataclass(frozen=True)
class Rule:
    """One cross-field check, in CEL for the API server and in Python for everything else."""

    cel: str
    """The CEL expression; `self` is the object the rule is attached to."""
    message: str
    """What is wrong and how to fix it, naming the field (the API server shows it verbatim)."""
    check: Callable[[Any], bool]
    """The same check in Python, given the validated model; True means valid."""
    field_path: str | None = None
    """Where the API server reports the error, relative to the object (for example `.max`)."""

    def to_crd(self) -> dict[str, str]:
        rule = {"rule": self.cel, "message": self.message}
        if self.field_path:
            rule["fieldPath"] = self.field_path
        return rule


class ApiModel(BaseModel):
    """Base of the spec models: camelCase, immutable once parsed, and as strict as the API
    server (no unknown fields, no "3" for 3)."""

    model_config = ConfigDict(
        strict=True,
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )

    rules: ClassVar[tuple[Rule, ...]] = ()
    """Cross-field rules of this object, checked by pydantic and written into the CRD."""

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        for rule in type(self).rules:
            if not rule.check(self):
                raise ValueError(rule.message)
        return self

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        if cls.rules:
            target = handler.resolve_ref_schema(json_schema)
            target["x-kubernetes-validations"] = [rule.to_crd() for rule in cls.rules]
        return json_schema


class StatusModel(ApiModel):
    """Base of the status models: written by the operator, so fields it no longer knows are
    ignored rather than refused (an older operator reading a newer status must not fail)."""

    model_config = ConfigDict(extra="ignore", frozen=False, strict=False)
