"""Tenant -> a bounded metric label value: a tenant named in the policy in force keeps its name
(the first `MAX_NAMED_TENANTS` in sorted order), a decision without a tenant is `default`,
any other tenant is `other`. A label value never comes from the records alone, so a producer
cannot grow the number of series."""

from __future__ import annotations

from schemas import ThresholdPolicy

DEFAULT = "default"  # a decision without a tenant
OTHER = "other"  # a tenant the policy does not name (or beyond the cap)
MAX_NAMED_TENANTS = 50  # tenants of the policy that get a label value of their own


class TenantLabels:
    """The label values of one policy (rebuilt on each reload)."""

    def __init__(self, policy: ThresholdPolicy | None, cap: int = MAX_NAMED_TENANTS) -> None:
        named = sorted(policy.tenants) if policy is not None else []
        self.named: tuple[str, ...] = tuple(t for t in named if t not in (DEFAULT, OTHER))[:cap]
        self._named = frozenset(self.named)

    def values(self) -> tuple[str, ...]:
        """Every label value this policy can give."""
        return (DEFAULT, *self.named, OTHER)

    def label_of(self, tenant: str | None) -> str:
        if tenant is None:
            return DEFAULT
        return tenant if tenant in self._named else OTHER
