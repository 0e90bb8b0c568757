"""Moderators' decisions -> counters per tenant x label, from which precision, recall and the
calibration gap follow (Prometheus recording rules, deploy/prometheus/alerts.yaml).

For each label a `Feedback` record judges (labels the model lacks are ignored), the tracker
takes the comment's score for it from the record's `scores`, else from the worker's
`ScoreCache`, else counts the decision as unscored. A scored decision is counted in
`moderation_feedback_decisions_total{tenant, label, flagged, decision}`: `flagged` is whether
the score is at or above the threshold the policy *in force now* gives the record's tenant and
that label (`Policy.thresholds`), `decision` the moderator's 1 or 0: flagged 1 is a true
positive, flagged 0 a false positive, unflagged 1 a false negative. The score is added to
`moderation_feedback_score_sum_total` (mean score - observed rate = the calibration gap).

Counters, not in-process windows: every replica counts the decisions it reads (each record is
read by one replica of the feedback group), and Prometheus sums them over a window. The
policy's precision targets are exported as `moderation_policy_precision_target{tenant, label}`
(`default` and `other`: the policy's defaults), refreshed on every reload.
"""

from __future__ import annotations

import logging

import numpy as np

from schemas import Feedback
from worker.metrics import Metrics
from worker.policy import Policies, PolicyHolder
from worker.quality.cache import ScoreCache
from worker.quality.tenants import DEFAULT, OTHER, TenantLabels

log = logging.getLogger(__name__)


class QualityTracker:
    """Counts decisions (`count`) under the policy in force; on the event loop only."""

    def __init__(
        self, policies: PolicyHolder, metrics: Metrics, cache: ScoreCache | None = None
    ) -> None:
        self._policies = policies
        self._metrics = metrics
        self._cache = cache
        self._labels = policies.labels
        self._index = {label: i for i, label in enumerate(self._labels)}
        self._tenants = TenantLabels(None)
        self._initialised: set[str] = set()
        self.policy_changed(policies.current)
        policies.subscribe(self.policy_changed)

    def policy_changed(self, policies: Policies) -> None:
        """A policy was put in force: its tenants' label values (new ones exported at 0) and its
        precision targets."""
        spec = policies.spec
        self._tenants = TenantLabels(spec)
        values = self._tenants.values()
        new = [value for value in values if value not in self._initialised]
        self._metrics.init_feedback_labels(new, self._labels)
        self._initialised.update(new)
        gauge = self._metrics.policy_precision_target
        gauge.clear()
        if spec is None:
            return
        for value in values:
            tenant = None if value in (DEFAULT, OTHER) else value
            for label, target in spec.targets_for(tenant).items():
                gauge.labels(value, label).set(target)

    def count(self, feedback: Feedback) -> str:
        """Count one record's decisions; returns its outcome (`counted`, `no_known_label`)."""
        decided = feedback.labels  # looked up per model label: O(labels), whatever the record
        judged = [(label, decided[label]) for label in self._labels if label in decided]
        if not judged:
            self._metrics.feedback_records.labels("no_known_label").inc()
            return "no_known_label"
        tenant = self._tenants.label_of(feedback.tenant)
        thresholds: np.ndarray = self._policies.current.primary.thresholds(feedback.tenant)
        published = self._cache.get(feedback.id) if self._cache is not None else None
        carried = feedback.scores or {}
        m = self._metrics
        for label, decision in judged:
            score = carried.get(label)
            if score is None and published is not None:
                score = published.score_of(label)
            if score is None:
                m.feedback_unscored.labels(tenant, label).inc()
                continue
            flagged = score >= thresholds[self._index[label]]
            m.feedback_decisions.labels(
                tenant, label, "true" if flagged else "false", str(decision)
            ).inc()
            m.feedback_score_sum.labels(tenant, label).inc(score)
        m.feedback_records.labels("counted").inc()
        return "counted"
