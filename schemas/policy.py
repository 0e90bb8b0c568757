"""Threshold policies: which score flags which label, by default and per tenant, versioned.

A policy file (YAML or JSON) is validated by `ThresholdPolicy`. Labels it does not name keep the
served artifact's thresholds (`label_thresholds` in its `config.json`); a tenant's thresholds
override the policy's defaults label by label. Whether every label it names is one the model
has is checked against the model (`unknown_labels`), not here: the schema does not know the model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

MODEL_POLICY_VERSION = "model"  # `policy_version` of outputs whose thresholds come from the model

Threshold = Annotated[
    float, Field(ge=0.0, le=1.0, description="Flag the label when its score is >= this.")
]
Thresholds = dict[Annotated[str, Field(min_length=1)], Threshold]


class TenantPolicy(BaseModel):
    """One tenant's overrides of the policy's default thresholds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    thresholds: Annotated[
        Thresholds, Field(description="Label -> threshold; labels not named keep the defaults.")
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
    tenants: Annotated[
        dict[Annotated[str, Field(min_length=1)], TenantPolicy],
        Field(description="Tenant -> overrides; a tenant not listed gets the defaults."),
    ] = {}

    def labels_named(self) -> set[str]:
        """Every label the policy sets a threshold for, by default or for a tenant."""
        named = set(self.thresholds)
        for tenant in self.tenants.values():
            named |= set(tenant.thresholds)
        return named

    def unknown_labels(self, model_labels: Iterable[str]) -> list[str]:
        """Labels the policy names that the model does not have (sorted; empty when valid)."""
        return sorted(self.labels_named() - set(model_labels))
