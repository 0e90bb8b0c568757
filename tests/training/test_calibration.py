"""Calibration maths: equal-mass ECE, Platt fits, the prior shift, cross-fitting, folding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from schemas.artifact import Calibration, LabelCalibration
from training.calibration import (
    CalibrationError,
    calibration_table,
    crossfit,
    expected_calibration_error,
    fit_calibration,
    fit_platt,
    fit_platt_to_probabilities,
    logit,
    match_calibration,
    prior_shift,
    raw_logits,
    reshift,
    sigmoid,
)
from training.modeling import classifier_head, fold_affine_into_head

RNG_SEED = 7


def _synthetic(n: int, slope: float, intercept: float, seed: int = RNG_SEED):
    """Logits z and labels drawn with P(y=1|z) = sigmoid(slope * z + intercept)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, n)
    y = (rng.random(n) < sigmoid(slope * z + intercept)).astype(np.float64)
    return z, y


def test_ece_uses_equal_mass_bins() -> None:
    # 30 rows, 15 bins of 2 rows of one probability each: every bin is off by 0.1
    p = np.array([0.1] * 14 + [0.9] * 16)
    y = np.array([0.0] * 14 + [1.0] * 16)
    assert expected_calibration_error(y, p) == pytest.approx(0.1)
    # a constant 0.2 on rows whose rate is 0.5 is off by 0.3 in every bin
    assert expected_calibration_error(np.tile([0.0, 1.0], 150), np.full(300, 0.2)) == (
        pytest.approx(0.3)
    )
    # 15 bins of exactly 20 rows: one bin entirely wrong (all 1 at p=0) costs 20/300
    p, y = np.zeros(300), np.zeros(300)
    y[-20:] = 1.0  # the stable sort keeps them in the last bin
    assert expected_calibration_error(y, p) == pytest.approx(20 / 300)


def test_platt_recovers_the_generating_map() -> None:
    z, y = _synthetic(40_000, slope=0.5, intercept=-1.0)
    platt = fit_platt(z, y)
    assert platt is not None
    assert platt.slope == pytest.approx(0.5, abs=0.03)
    assert platt.intercept == pytest.approx(-1.0, abs=0.05)
    assert fit_platt(z, np.zeros_like(y)) is None  # one class: nothing to fit


def test_platt_is_finite_on_separable_rows() -> None:
    z = np.array([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0])
    platt = fit_platt(z, (z > 0).astype(float))
    assert platt is not None and 0 < platt.slope < 20  # smoothed targets: no divergence


def test_prior_shift_is_bayes_rule_on_the_odds() -> None:
    p, train, target = np.array([0.05, 0.3, 0.5, 0.9]), 0.3, 0.1
    shifted = sigmoid(logit(p) + prior_shift(target, train))
    ratio = (target / (1 - target)) / (train / (1 - train))
    np.testing.assert_allclose(shifted, p * ratio / (p * ratio + 1 - p), rtol=1e-9)
    # calibrated at the training rate; real traffic has the same texts per class but a third of
    # the positives (label shift): the shifted probabilities are calibrated there
    z, y = _synthetic(200_000, slope=1.0, intercept=-1.5)
    rng = np.random.default_rng(1)
    rate = y.mean()
    keep_positive = ((1 - rate) * (rate / 3) / (1 - rate / 3)) / rate
    traffic = (y == 0) | (rng.random(len(y)) < keep_positive)
    moved = sigmoid(z[traffic] - 1.5 + prior_shift(y[traffic].mean(), rate))
    assert y[traffic].mean() == pytest.approx(rate / 3, rel=0.05)
    assert moved.mean() == pytest.approx(y[traffic].mean(), rel=0.05)
    assert expected_calibration_error(y[traffic], moved) < 0.01
    unshifted = sigmoid(z[traffic] - 1.5)
    assert expected_calibration_error(y[traffic], unshifted) > 0.05


def test_crossfitted_platt_fixes_a_miscalibrated_model() -> None:
    z, y = _synthetic(20_000, slope=0.4, intercept=-1.2)  # raw sigmoid(z) is overconfident
    raw = sigmoid(z)
    held_out = crossfit(z, y)
    assert held_out is not None
    assert expected_calibration_error(y, raw) > 0.1
    assert expected_calibration_error(y, held_out) < 0.02
    assert crossfit(z[:50], np.r_[np.ones(3), np.zeros(47)]) is None  # 3 positives < 5 folds
    table = calibration_table(z[:, None], y[:, None], ["a"])["a"]
    assert table["ece_before"] > 0.1 and table["ece_after"] < 0.02
    assert table["ece_isotonic"] < 0.05 and table["bce_after"] < table["bce_before"]
    assert 0 < table["ece_floor"] < 0.02


def test_fit_calibration_composes_with_one_already_folded() -> None:
    z, y = _synthetic(20_000, slope=0.5, intercept=-1.0)
    first = fit_calibration(
        z[:, None], y[:, None], ["a"], current=None, base_rates={"a": 0.05}, fitted_on="rows"
    )
    entry = first.calibration.labels["a"]
    assert entry.prior_shift == pytest.approx(prior_shift(0.05, y.mean()), abs=1e-4)
    current = first.scale * z[:, None] + first.offset  # the head's logits after folding
    np.testing.assert_allclose(raw_logits(current, ["a"], first.calibration)[:, 0], z, atol=1e-9)
    # refitting on the calibrated head gives the same parameters, and a no-op change of head
    again = fit_calibration(
        current, y[:, None], ["a"], current=first.calibration, base_rates={"a": 0.05}, fitted_on="r"
    )
    assert again.calibration.labels["a"].slope == pytest.approx(entry.slope, rel=1e-6)
    assert again.scale[0] == pytest.approx(1.0, abs=1e-6)
    assert again.offset[0] == pytest.approx(0.0, abs=1e-5)
    # new base rates without a refit: only the shift moves
    moved = reshift(first.calibration, ["a"], first.training_rates, {"a": 0.2})
    assert moved.scale[0] == 1.0
    assert moved.offset[0] == pytest.approx(logit(0.2) - logit(0.05), abs=1e-4)
    with pytest.raises(CalibrationError, match="names label"):
        fit_calibration(
            z[:, None], y[:, None], ["a"], current=None, base_rates={"b": 0.1}, fitted_on="r"
        )


def test_soft_target_platt_recovers_the_map_behind_the_targets() -> None:
    z = np.random.default_rng(RNG_SEED).normal(0.0, 2.0, 5000)
    platt = fit_platt_to_probabilities(z, sigmoid(0.7 * z - 1.5))
    assert platt.slope == pytest.approx(0.7, abs=1e-3)
    assert platt.intercept == pytest.approx(-1.5, abs=1e-3)


def test_a_refit_matched_to_a_reference_reproduces_its_probabilities() -> None:
    """A model whose logits are an affine change of the reference's (a refit scaled otherwise)
    gets a map that gives back the reference's calibrated probabilities; the stored entry
    keeps the reference's base rate and this model's own training rate."""
    rng = np.random.default_rng(RNG_SEED)
    reference = rng.normal(-2.0, 2.5, (4000, 2))  # the reference's head: calibrated, shifted
    refit = 1.6 * reference + np.array([0.8, -0.3])  # the refit's raw logits
    base, training = {"a": 0.05, "b": 0.01}, {"a": 0.3, "b": 0.02}
    fit = match_calibration(
        refit, reference, ["a", "b"], current=None, training_rates=training,
        base_rates=base, fitted_on="rows", y=(rng.random((4000, 2)) < 0.3),
    )  # fmt: skip
    np.testing.assert_allclose(fit.scale * refit + fit.offset, reference, atol=1e-3)
    entry = fit.calibration.labels["a"]
    assert entry.prior_shift == pytest.approx(prior_shift(0.05, 0.3))
    assert entry.slope == pytest.approx(1 / 1.6, rel=1e-3)
    assert fit.base_rates == base and fit.training_rates == training
    assert 1000 < entry.positives < 1400
    # where the scores fall as the reference's rise, only the prior shift applies
    flipped = refit.copy()
    flipped[:, 1] *= -1
    partly = match_calibration(
        flipped, reference, ["a", "b"], current=None, training_rates=training,
        base_rates=base, fitted_on="rows",
    )  # fmt: skip
    assert partly.calibration.labels["a"].fitted and not partly.calibration.labels["b"].fitted
    assert (partly.scale[1], partly.offset[1]) == (1.0, pytest.approx(prior_shift(0.01, 0.02)))


def test_a_label_without_a_usable_fit_keeps_only_the_shift(
    caplog: pytest.LogCaptureFixture,
) -> None:
    z, y = _synthetic(5000, slope=-1.0, intercept=0.0)
    labels = np.c_[y, np.zeros_like(y)]  # decreasing scores; one class only
    fit = fit_calibration(
        np.c_[z, z], labels, ["a", "b"], current=None, base_rates=None, fitted_on="r"
    )
    for label in ("a", "b"):
        entry = fit.calibration.labels[label]
        assert not entry.fitted and (entry.slope, entry.intercept) == (1.0, 0.0)
    assert "do not increase" in caplog.text and "one class only" in caplog.text
    assert fit.scale.tolist() == [1.0, 1.0]


def test_thresholds_mapped_through_the_map_keep_every_flag() -> None:
    z, y = _synthetic(5000, slope=0.6, intercept=-0.8)
    fit = fit_calibration(z[:, None], y[:, None], ["a"], current=None, base_rates=None,
                          fitted_on="r")  # fmt: skip
    before = sigmoid(z)
    for threshold in (0.05, 0.3, float(np.round(before[17], 6)), 0.77):
        mapped = fit.map_thresholds({"a": threshold})["a"]
        after = sigmoid(fit.scale[0] * z + fit.offset[0])
        assert ((after >= mapped) == (before >= threshold)).all()


def test_folding_rewrites_the_head_to_the_affine_map() -> None:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
        problem_type="multi_label_classification",
    )
    model = BertForSequenceClassification(config).eval()
    ids = torch.randint(1, 100, (4, 9))
    with torch.no_grad():
        before = model(input_ids=ids).logits.double().numpy()
    scale, offset = np.array([0.5, 1.0, 2.0]), np.array([-1.0, 0.25, 3.0])
    fold_affine_into_head(model, scale, offset)
    with torch.no_grad():
        after = model(input_ids=ids).logits.double().numpy()
    np.testing.assert_allclose(after, scale * before + offset, atol=1e-5)
    assert classifier_head(model) is model.classifier


def test_contract_model_matches_what_training_records() -> None:
    entry = LabelCalibration(slope=1.2, intercept=-0.3, prior_shift=-1.1, positives=4)
    calibration = Calibration(fitted_on="rows", rows=10, labels={"a": entry})
    assert calibration.total_offset("a") == pytest.approx(-1.4)
    logits = np.array([[0.5], [2.0]])
    np.testing.assert_allclose(
        raw_logits(logits, ["a"], calibration)[:, 0], (logits[:, 0] + 1.4) / 1.2
    )
