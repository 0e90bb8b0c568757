"""Threshold policies: which score flags which label, by default and per tenant, versioned.

A policy file (YAML or JSON) is validated by `ThresholdPolicy`. Labels it does not name keep the
served artifact's thresholds (`label_thresholds` in its `config.json`); a tenant's thresholds
override the policy's defaults label by label. Whether every label it names is one the model
has is checked against the model (`unknown_labels`), not here: the schema does not know the model.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

MODEL_POLICY_VERSION = "model"  # `policy_version` of outputs whose thresholds come from the model

Threshold = Annotated[
    float, Field(ge=0.0, le=1.0, description="Flag the label when its score is >= this.")
]
Thresholds = dict[Annotated[str, Field(min_length=1)], Threshold]
PrecisionTarget = Annotated[
    float,
    Field(
        gt=0.0,
        le=1.0,
        description="The flag precision that moderators' decisions should confirm (alerted on).",
    ),
]
PrecisionTargets = dict[Annotated[str, Field(min_length=1)], PrecisionTarget]


class UnsupportedLanguage(StrEnum):
    """What happens to a comment in a language the model does not serve (`served_languages`).

    The language is the one a request declares (the HTTP API's `languages`), else the one
    detected with confidence; an unsure detection counts as the model's main language."""

    REFUSE = "refuse"  # not scored: HTTP 400 LANGUAGE_NOT_SUPPORTED_BY_ATTRIBUTE (as Perspective
    # did), Kafka dead-letters it with `unsupported_language`
    SCORE = "score"  # scored as usual and marked unsupported (the scores are less reliable)
    HOLD = "hold"  # scored and marked unsupported, its flags held for review instead of applied


# When neither the policy nor the tenant says: each front door's own default.
HTTP_DEFAULT_UNSUPPORTED_LANGUAGE = UnsupportedLanguage.REFUSE  # as Perspective answered
KAFKA_DEFAULT_UNSUPPORTED_LANGUAGE = UnsupportedLanguage.SCORE  # as the worker always did, marked

LanguageMode = Annotated[
    UnsupportedLanguage | None,
    Field(
        description="What happens to text in a language the model does not serve: `refuse`, "
        "`score` (scored and marked unsupported) or `hold` (scored, marked, flags held for "
        "review). Unset: the policy's default, else the front door's (HTTP API: refuse; Kafka: "
        "score)."
    ),
]


class TenantPolicy(BaseModel):
    """One tenant's overrides of the policy's default thresholds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    thresholds: Annotated[
        Thresholds, Field(description="Label -> threshold; labels not named keep the defaults.")
    ] = {}
    unsupported_language: LanguageMode = None
    precision_targets: Annotated[
        PrecisionTargets,
        Field(
            description="Label -> precision target of this tenant's flags; labels not named keep "
            "the policy's default targets."
        ),
    ] = {}


class ThresholdPolicy(BaseModel):
    """A versioned threshold policy (the file behind `MODERATION_POLICY_FILE`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Annotated[
        str,
        Field(
            min_length=1,
            max_length=128,
            description="Shown as `policy_version` in every output scored under this policy.",
        ),
    ]
    description: Annotated[str | None, Field(description="Free text for humans.")] = None
    thresholds: Annotated[
        Thresholds,
        Field(description="Default label -> threshold; labels not named keep the model's."),
    ] = {}
    unsupported_language: LanguageMode = None
    precision_targets: Annotated[
        PrecisionTargets,
        Field(
            description="Default label -> precision target of the flags, as moderators' "
            "decisions measure it (`moderation_policy_precision_target`; an alert fires below "
            "it). Written by `moderation-train thresholds --target-precision`."
        ),
    ] = {}
    tenants: Annotated[
        dict[Annotated[str, Field(min_length=1)], TenantPolicy],
        Field(description="Tenant -> overrides; a tenant not listed gets the defaults."),
    ] = {}

    def language_mode(self, tenant: str | None) -> UnsupportedLanguage | None:
        """The tenant's mode for unsupported languages, else the policy's; None: unset."""
        own = self.tenants.get(tenant) if tenant is not None else None
        if own is not None and own.unsupported_language is not None:
            return own.unsupported_language
        return self.unsupported_language

    def labels_named(self) -> set[str]:
        """Every label the policy sets a threshold or a precision target for, by default or for
        a tenant."""
        named = set(self.thresholds) | set(self.precision_targets)
        for tenant in self.tenants.values():
            named |= set(tenant.thresholds) | set(tenant.precision_targets)
        return named

    def targets_for(self, tenant: str | None) -> dict[str, float]:
        """Label -> precision target for `tenant`: the tenant's own over the defaults (None, or
        a tenant not listed: the defaults)."""
        own = self.tenants.get(tenant) if tenant is not None else None
        return dict(self.precision_targets) | (dict(own.precision_targets) if own else {})

    def unknown_labels(self, model_labels: Iterable[str]) -> list[str]:
        """Labels the policy names that the model does not have (sorted; empty when valid)."""
        return sorted(self.labels_named() - set(model_labels))
