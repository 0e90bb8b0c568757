"""Per-label calibration: Platt scaling on the head's logits, prior (base-rate) correction,
expected calibration error, reliability diagrams and cross-fitted estimates of both.

Platt scaling (p = sigmoid(a * z + b) per label, fitted on validation logits z) and the prior
correction (a shift of logit(base rate) - logit(training rate)) are both affine in logit space,
so an export folds them into the classifier head's weight and bias
(`training.export_calibration`): every consumer of the artifact (the worker's torch and ONNX
backends, `transformers.pipeline(..., function_to_apply="sigmoid")`) then gives the calibrated
probabilities with no extra code.
Isotonic regression is measured beside Platt (`calibration_table`) but not shipped: it did not
lower the cross-fitted error enough to be worth a map the consumers would have to apply
(docs/training.md).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from schemas.artifact import Calibration, LabelCalibration
from training.data import DataError

log = logging.getLogger(__name__)

ECE_BINS = 15
CROSSFIT_FOLDS = 5
CROSSFIT_SEED = 0
_EPS = 1e-6

# Label prevalence of the full Jigsaw train.csv (159,571 rows; ../shared/data/jigsaw/README.md):
# the rates real traffic is closer to than our rows (about 3x richer in toxic comments).
JIGSAW_BASE_RATES = {
    "toxic": 0.096,
    "severe_toxic": 0.010,
    "obscene": 0.053,
    "threat": 0.003,
    "insult": 0.049,
    "identity_hate": 0.009,
}

Method = Literal["platt", "isotonic"]


class CalibrationError(DataError):
    """A calibration cannot be fitted or applied as asked (exit 2 on the command line)."""


BaseRates = Mapping[str, float] | Literal["training"] | None
"""Target rates per label, `"training"` (no prior shift) or None (the full Jigsaw rates)."""


def logit(p: np.ndarray | float) -> np.ndarray:
    """log(p / (1 - p)), with p clipped away from 0 and 1."""
    q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(q) - np.log1p(-q)


def sigmoid(z: np.ndarray | float) -> np.ndarray:
    """1 / (1 + exp(-z)) in float64."""
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def prior_shift(target_rate: float, training_rate: float) -> float:
    """The logit shift that moves probabilities fitted at `training_rate` to `target_rate`."""
    return float(logit(target_rate) - logit(training_rate))


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE with equal-mass bins: the rows sorted by probability are cut into `bins` groups of
    (nearly) equal size; the mean |observed rate - mean probability|, weighted by group size."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    groups = [g for g in np.array_split(order, min(bins, len(p))) if len(g)]
    return float(sum(len(g) * abs(y[g].mean() - p[g].mean()) for g in groups) / len(p))


def reliability_points(
    y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS
) -> tuple[np.ndarray, np.ndarray]:
    """(mean probability, observed rate) of each equal-mass bin, as ECE bins them."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    groups = [g for g in np.array_split(np.argsort(p, kind="stable"), bins) if len(g)]
    return np.array([p[g].mean() for g in groups]), np.array([y[g].mean() for g in groups])


@dataclass(frozen=True)
class Platt:
    """p = sigmoid(slope * z + intercept)."""

    slope: float
    intercept: float

    def logits(self, z: np.ndarray) -> np.ndarray:
        return self.slope * np.asarray(z, dtype=np.float64) + self.intercept


def fit_platt(z: np.ndarray, y: np.ndarray) -> Platt | None:
    """Platt scaling as in Platt (1999): logistic regression of the labels on the logits, with
    targets smoothed to (N+ + 1) / (N+ + 2) and 1 / (N- + 2) so that separable data still has a
    finite fit. None where the rows hold one class only (nothing to fit)."""
    y = np.asarray(y) >= 0.5
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return None
    target = np.where(y, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    return fit_platt_to_probabilities(z, target)


def _fit_predict(
    method: Method, z_fit: np.ndarray, y_fit: np.ndarray, z_out: np.ndarray
) -> np.ndarray | None:
    """Calibrated logits of `z_out` from a map fitted on (`z_fit`, `y_fit`)."""
    if method == "platt":
        platt = fit_platt(z_fit, y_fit)
        return None if platt is None else platt.logits(z_out)
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(out_of_bounds="clip", y_min=_EPS, y_max=1 - _EPS)
    iso.fit(z_fit, y_fit)
    return logit(iso.predict(z_out))


def crossfit(
    z: np.ndarray,
    y: np.ndarray,
    method: Method = "platt",
    *,
    folds: int = CROSSFIT_FOLDS,
    seed: int = CROSSFIT_SEED,
) -> np.ndarray | None:
    """Held-out calibrated probabilities of one label: each of `folds` stratified folds is scored
    by a map fitted on the others, then shifted from the fitting folds' label rate to its own
    rows' rate (the shipped model's probabilities are shifted to the traffic's base rate the same
    way). None where a class has fewer rows than folds."""
    from sklearn.model_selection import StratifiedKFold

    y = (np.asarray(y) >= 0.5).astype(np.int64)
    z = np.asarray(z, dtype=np.float64)
    if min(int(y.sum()), int(len(y) - y.sum())) < folds:
        return None
    out = np.empty(len(z))
    for fit_rows, held_rows in StratifiedKFold(folds, shuffle=True, random_state=seed).split(z, y):
        calibrated = _fit_predict(method, z[fit_rows], y[fit_rows], z[held_rows])
        if calibrated is None:
            return None
        shift = prior_shift(y[held_rows].mean(), y[fit_rows].mean())
        out[held_rows] = sigmoid(calibrated + shift)
    return out


def ece_floor(p: np.ndarray, rounds: int = 200, seed: int = 0) -> float:
    """The ECE a perfectly calibrated model with these probabilities would show on this many
    rows (labels drawn from the probabilities themselves, mean over `rounds` draws): the
    sampling noise below which a measured ECE means nothing."""
    rng = np.random.default_rng(seed)
    p = np.asarray(p, dtype=np.float64)
    draws = [expected_calibration_error(rng.random(len(p)) < p, p) for _ in range(rounds)]
    return float(np.mean(draws))


def bce(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary cross-entropy of one label."""
    q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    y = np.asarray(y, dtype=np.float64)
    return float(-(y * np.log(q) + (1 - y) * np.log1p(-q)).mean())


def calibration_table(
    z: np.ndarray, y: np.ndarray, labels: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per label: positives, rate, and ECE / BCE of the raw probabilities (before) against
    cross-fitted Platt (after, the shipped method) and cross-fitted isotonic (measured only),
    and the ECE noise floor of the Platt probabilities (`ece_floor`).
    `z` are the uncalibrated head's logits (n, labels), `y` the labels."""
    table: dict[str, dict[str, Any]] = {}
    for j, label in enumerate(labels):
        yj, zj = (y[:, j] >= 0.5).astype(np.float64), z[:, j]
        raw = sigmoid(zj)
        row: dict[str, Any] = {
            "positives": int(yj.sum()),
            "rate": round(float(yj.mean()), 6),
            "ece_before": round(expected_calibration_error(yj, raw), 6),
            "bce_before": round(bce(yj, raw), 6),
        }
        for name, method in (("after", "platt"), ("isotonic", "isotonic")):
            held_out = crossfit(zj, yj, method)  # type: ignore[arg-type]
            row[f"ece_{name}"] = (
                None if held_out is None else round(expected_calibration_error(yj, held_out), 6)
            )
            row[f"bce_{name}"] = None if held_out is None else round(bce(yj, held_out), 6)
            if name == "after":
                row["ece_floor"] = None if held_out is None else round(ece_floor(held_out), 6)
        table[label] = row
    return table


def crossfitted_probabilities(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n, labels) cross-fitted Platt probabilities (raw sigmoid where a label cannot be)."""
    out = sigmoid(z)
    for j in range(z.shape[1]):
        held_out = crossfit(z[:, j], y[:, j])
        if held_out is not None:
            out[:, j] = held_out
    return out


def raw_logits(
    logits: np.ndarray, labels: Sequence[str], calibration: Calibration | None
) -> np.ndarray:
    """The uncalibrated head's logits, undoing a calibration folded into the head."""
    if calibration is None:
        return np.asarray(logits, dtype=np.float64)
    out = np.empty_like(logits, dtype=np.float64)
    for j, label in enumerate(labels):
        slope = calibration.labels[label].slope
        out[:, j] = (logits[:, j] - calibration.total_offset(label)) / slope
    return out


@dataclass(frozen=True)
class CalibrationFit:
    """A fitted calibration: what to store, and the affine change of the current head's logits
    (z_new = scale * z_current + offset, per label) that applies it."""

    labels: tuple[str, ...]  # the head's order: `scale` and `offset` follow it
    calibration: Calibration
    base_rates: dict[str, float]
    training_rates: dict[str, float]
    scale: np.ndarray
    offset: np.ndarray

    def map_thresholds(self, thresholds: Mapping[str, float]) -> dict[str, float]:
        """Thresholds on the current probabilities mapped through the same increasing map:
        every flag decision stays as it was."""
        return {
            label: round(
                float(sigmoid(self.scale[j] * logit(thresholds[label]) + self.offset[j])), 9
            )
            for j, label in enumerate(self.labels)
        }


def resolve_base_rates(
    labels: Sequence[str],
    training_rates: Mapping[str, float],
    requested: BaseRates,
    current: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """The rates the calibrated probabilities will assume: `requested` per label; a label it
    does not name keeps its `current` rate if given, else the full Jigsaw rate (Jigsaw labels),
    else its training rate (no shift). `"training"`: the training rates for all."""
    if requested == "training":
        return {label: float(training_rates[label]) for label in labels}
    requested = dict(requested or {})
    unknown = sorted(set(requested) - set(labels))
    if unknown:
        raise CalibrationError(f"--base-rates names label(s) the model does not have: {unknown}")
    fallback = {**training_rates, **JIGSAW_BASE_RATES, **(current or {})}
    return {label: float(requested.get(label, fallback[label])) for label in labels}


def fit_calibration(
    logits: np.ndarray,
    y: np.ndarray,
    labels: Sequence[str],
    *,
    current: Calibration | None,
    base_rates: BaseRates,
    fitted_on: str,
) -> CalibrationFit:
    """Fit Platt per label on the uncalibrated logits (`logits` are the current head's; a
    calibration already folded into it is undone first) and add the prior shift to
    `base_rates`. A label that cannot be fitted (one class in the rows, or scores that do not
    increase with the label) keeps slope 1, intercept 0 (`fitted: false`), with a warning."""
    labels = list(labels)
    z = raw_logits(logits, labels, current)
    yb = np.asarray(y) >= 0.5
    training_rates = {
        label: round(float(np.clip(yb[:, j].mean(), _EPS, 1 - _EPS)), 6)
        for j, label in enumerate(labels)
    }
    targets = resolve_base_rates(labels, training_rates, base_rates)
    entries: dict[str, LabelCalibration] = {}
    scale, offset = np.ones(len(labels)), np.zeros(len(labels))
    for j, label in enumerate(labels):
        platt = fit_platt(z[:, j], yb[:, j])
        if platt is None or platt.slope <= 0:
            log.warning(
                "label %r: %s on the calibration rows; left uncalibrated (slope 1, "
                "intercept 0), only the prior shift applies",
                label,
                "one class only"
                if platt is None
                else f"the scores do not increase with the label (Platt slope {platt.slope:.3g})",
            )
        fitted = platt is not None and platt.slope > 0
        entry = LabelCalibration(
            slope=platt.slope if fitted and platt else 1.0,
            intercept=platt.intercept if fitted and platt else 0.0,
            prior_shift=prior_shift(targets[label], training_rates[label]),
            positives=int(yb[:, j].sum()),
            fitted=fitted,
        )
        entries[label] = entry
        # z_raw = (z_current - c_old) / a_old; z_new = a * z_raw + b + shift
        old_slope = current.labels[label].slope if current else 1.0
        old_offset = current.total_offset(label) if current else 0.0
        scale[j] = entry.slope / old_slope
        offset[j] = entry.intercept + entry.prior_shift - scale[j] * old_offset
    calibration = Calibration(fitted_on=fitted_on, rows=len(y), labels=entries)
    return CalibrationFit(tuple(labels), calibration, targets, training_rates, scale, offset)


def reshift(
    calibration: Calibration,
    labels: Sequence[str],
    training_rates: Mapping[str, float],
    base_rates: Mapping[str, float],
) -> CalibrationFit:
    """Move an artifact's calibrated probabilities to new base rates (no refit); `labels` in
    the head's order."""
    entries, offset = {}, np.zeros(len(labels))
    for j, label in enumerate(labels):
        old = calibration.labels[label]
        shift = prior_shift(base_rates[label], training_rates[label])
        entries[label] = old.model_copy(update={"prior_shift": shift})
        offset[j] = shift - old.prior_shift
    return CalibrationFit(
        tuple(labels),
        calibration.model_copy(update={"labels": entries}),
        dict(base_rates),
        dict(training_rates),
        np.ones(len(labels)),
        offset,
    )


def fit_platt_to_probabilities(z: np.ndarray, target: np.ndarray) -> Platt:
    """Platt scaling to soft targets: the (slope, intercept) whose sigmoid(slope * z + intercept)
    is closest in cross-entropy to the probabilities `target` (each row counted as a positive
    with weight t and a negative with weight 1 - t)."""
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(z, dtype=np.float64).reshape(-1, 1)
    t = np.clip(np.asarray(target, dtype=np.float64), 0.0, 1.0)
    model = LogisticRegression(C=np.inf, max_iter=1000)
    model.fit(
        np.vstack([x, x]),
        np.concatenate([np.ones(len(x)), np.zeros(len(x))]),
        sample_weight=np.concatenate([t, 1 - t]),
    )
    return Platt(float(model.coef_[0, 0]), float(model.intercept_[0]))


def match_calibration(
    logits: np.ndarray,
    reference_logits: np.ndarray,
    labels: Sequence[str],
    *,
    current: Calibration | None,
    training_rates: Mapping[str, float],
    base_rates: Mapping[str, float],
    fitted_on: str,
    y: np.ndarray | None = None,
) -> CalibrationFit:
    """Calibrate a model that has no held-out rows left (a refit on all rows) so that its
    probabilities reproduce a calibrated reference model's (`reference_logits`, that model's
    head on the same texts, served at `base_rates`): Platt per label fitted to the reference's
    probabilities moved to this model's `training_rates`, then the same prior shift to
    `base_rates` the reference applies. The texts should be ones both models were trained on,
    so that both are in-sample there alike. A label whose scores do not increase with the
    reference's keeps slope 1, intercept 0 (`fitted: false`), with a warning. `y` (the texts'
    labels, if any) only counts the positives recorded per label."""
    labels = list(labels)
    z = raw_logits(logits, labels, current)
    entries: dict[str, LabelCalibration] = {}
    scale, offset = np.ones(len(labels)), np.zeros(len(labels))
    for j, label in enumerate(labels):
        shift = prior_shift(base_rates[label], training_rates[label])
        target = sigmoid(np.asarray(reference_logits[:, j], dtype=np.float64) - shift)
        platt = fit_platt_to_probabilities(z[:, j], target)
        fitted = platt.slope > 0
        if not fitted:
            log.warning(
                "label %r: this model's scores do not increase with the reference's (slope "
                "%.3g); left uncalibrated (slope 1, intercept 0), only the prior shift applies",
                label,
                platt.slope,
            )
            platt = Platt(1.0, 0.0)
        entries[label] = LabelCalibration(
            slope=platt.slope,
            intercept=platt.intercept,
            prior_shift=shift,
            positives=0 if y is None else int((np.asarray(y)[:, j] >= 0.5).sum()),
            fitted=fitted,
        )
        old_slope = current.labels[label].slope if current else 1.0
        old_offset = current.total_offset(label) if current else 0.0
        scale[j] = platt.slope / old_slope
        offset[j] = platt.intercept + shift - scale[j] * old_offset
    calibration = Calibration(fitted_on=fitted_on, rows=len(z), labels=entries)
    return CalibrationFit(
        tuple(labels), calibration, dict(base_rates), dict(training_rates), scale, offset
    )


def plot_reliability(
    y: np.ndarray,
    curves: Mapping[str, np.ndarray],
    labels: Sequence[str],
    path: Path,
    bins: int = ECE_BINS,
) -> None:
    """Reliability diagrams (observed rate against mean probability per equal-mass bin), one
    panel per label, one line per entry of `curves` (name -> (n, labels) probabilities)."""
    from training.plots import label_panels

    title = f"Reliability, {bins} equal-mass bins"
    with label_panels(labels, path, panel_height=3.8, title=title) as panels:
        for j, (label, ax) in enumerate(zip(labels, panels, strict=True)):
            yj = (y[:, j] >= 0.5).astype(np.float64)
            top = 0.0
            for name, probs in curves.items():
                mean_p, observed = reliability_points(yj, probs[:, j], bins)
                ece = expected_calibration_error(yj, probs[:, j], bins)
                ax.plot(mean_p, observed, marker="o", markersize=3, label=f"{name} (ECE {ece:.3f})")
                top = max(top, float(mean_p.max()), float(observed.max()))
            top = min(1.0, top * 1.05 + 0.01)
            ax.plot([0, top], [0, top], color="grey", linestyle=":", linewidth=1)
            ax.set_xlim(0, top)
            ax.set_ylim(0, top)
            ax.set_title(f"{label} (rate {yj.mean():.3f})")
            ax.set_xlabel("mean predicted probability")
            ax.set_ylabel("observed rate")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper left")
