"""The model card (the artifact's `README.md`): how the model was made, its validation metrics
and thresholds, its limitations and its calibration, rendered from the training info, the
artifact contract and the exported `config.json`."""

from __future__ import annotations

from typing import Any

from schemas.artifact import ArtifactContract
from training.evaluate import format_metric


def model_card(info: dict[str, Any], contract: ArtifactContract, config: dict[str, Any]) -> str:
    """Markdown model card from the training info, the artifact contract and the exported
    `config.json` (for the architecture)."""
    metrics: dict[str, Any] = info.get("metrics") or {}
    per_label: dict[str, dict[str, Any]] = metrics.get("labels") or {}
    n_params = info.get("parameters")
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-classification",
        "language: en",
        "tags: [toxicity, multi-label, moderation]",
        "---",
        "",
        f"# {contract.model_name}",
        "",
        f"Multi-label toxicity classifier (`{config.get('model_type')}`, "
        f"{config.get('num_hidden_layers')} layers, hidden {config.get('hidden_size')}, "
        f"{config.get('num_attention_heads')} heads"
        + (f", {n_params:,} parameters" if isinstance(n_params, int) else "")
        + f"), version `{contract.model_version}`.",
        "",
        "## How it was made",
        "",
        f"- method: {info.get('method', 'fit')}",
        f"- base / initialisation: {info.get('base', 'n/a')}",
        f"- training data: {info.get('train_data', 'n/a')} ({info.get('train_rows', 'n/a')} rows)",
        f"- validation data: {info.get('val_data', 'n/a')} ({info.get('val_rows', 'n/a')} rows)",
    ]
    if info.get("skipped_rows"):
        lines.append(f"- bad rows skipped (`--skip-bad-rows`): {info['skipped_rows']}")
    for key, value in (info.get("details") or {}).items():
        lines.append(f"- {key}: {value}")
    if info.get("command"):
        lines.append(f"- command: `{info['command']}`")
    lines += [
        "",
        "## Validation metrics",
        "",
        f"- mean ROC-AUC: {format_metric(metrics.get('mean_roc_auc'))}",
        f"- mean PR-AUC: {format_metric(metrics.get('mean_pr_auc'))}",
        f"- mean BCE: {format_metric(metrics.get('bce'))}",
        f"- mean F1 at the thresholds below: {format_metric(metrics.get('mean_f1'))}",
        "",
        "| label | threshold | ROC-AUC | PR-AUC | F1 |",
        "|---|---|---|---|---|",
    ]
    for label in contract.labels:
        m = per_label.get(label, {})
        lines.append(
            f"| {label} | {contract.label_thresholds[label]:.3f} "
            f"| {format_metric(m.get('roc_auc'))} | {format_metric(m.get('pr_auc'))} "
            f"| {format_metric(m.get('f1'))} |"
        )
    for note in info.get("notes") or []:
        lines += ["", str(note)]
    lines += limitations_section(info, contract)
    lines += _calibration_section(contract, info.get("calibration") or {})
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "from transformers import pipeline",
        'clf = pipeline("text-classification", model="PATH", top_k=None, '
        'function_to_apply="sigmoid")',
        "```",
        "",
        "Flag a label when its probability is >= `label_thresholds[label]` in `config.json` "
        + _thresholds_origin(contract, info),
        "",
    ]
    return "\n".join(lines)


def _thresholds_origin(contract: ArtifactContract, info: dict[str, Any]) -> str:
    """Where the thresholds come from, and what the probabilities assume (the card's usage)."""
    if contract.calibration is None:
        return (
            "(chosen for max F1 on the validation split). Probabilities are not calibrated to "
            "real traffic base rates."
        )
    reference = (info.get("calibration") or {}).get("reference")
    chosen = (
        f"(those of `{reference['model_name']}` `{reference['model_version']}`, chosen there "
        "for max F1 on its validation split; this model's calibration reproduces its "
        "probabilities)"
        if reference
        else "(chosen for max F1 on the validation split, then mapped through the calibration, "
        "so every flag decision is unchanged)"
    )
    return f"{chosen}. The probabilities are calibrated for traffic at `label_base_rates`."


RARE_LABEL = 0.05  # a label with fewer positives than this share of training rows is "rare"


def limitations_section(info: dict[str, Any], contract: ArtifactContract) -> list[str]:
    """The card's "Limitations": the rare labels of the training rows, and the known misses
    recorded when the model was built (`known_misses` in the training info: text, label,
    score, threshold). Empty when the info records neither."""
    rates: dict[str, float] = info.get("label_positive_rates") or {}
    misses: list[dict[str, Any]] = info.get("known_misses") or []
    if not rates and not misses:
        return []
    lines = ["", "## Limitations", ""]
    rare = {label: rate for label, rate in rates.items() if rate < RARE_LABEL}
    if rates:
        shares = ", ".join(f"{label} {rate:.1%}" for label, rate in rates.items())
        lines.append(f"- Positive rows per label in the training data: {shares}.")
    if rare:
        lines.append(
            "- Rare labels ("
            + ", ".join(rare)
            + ") are learned from few examples: expect misses there, above all phrasings "
            "unlike the training rows (compare their PR-AUC and F1 above)."
        )
    for miss in misses:
        label = str(miss["label"])
        share = f" ({label} is {rates[label]:.1%} of the training rows)" if label in rates else ""
        lines.append(
            f'- Known miss: "{miss["text"]}" is a {label} the model does not flag: '
            f"{label} {float(miss['score']):.3f} against a threshold of "
            f"{float(miss['threshold']):.3f}{share}. {miss.get('why', '')}".rstrip()
        )
    return lines


def _calibration_section(contract: ArtifactContract, fitted: dict[str, Any]) -> list[str]:
    """The card's calibration section: rates, parameters and the cross-fitted ECE (of the
    reference model, for a calibration matched to one: `match_reference`)."""
    calibration = contract.calibration
    if calibration is None:
        return []
    base = contract.label_base_rates or {}
    training = contract.label_training_rates or {}
    table: dict[str, dict[str, Any]] = fitted.get("table") or {}
    ece = (
        "ECE: expected calibration error, 15 equal-mass bins, 5-fold cross-fitted (the map "
        "fitted on 4 folds, measured on the 5th, shifted to the held-out rows' own rate); the "
        "floor is the ECE a perfectly calibrated model would show on as many rows (sampling "
        "noise)."
    )
    folded = (
        "Both are folded into the classifier head's weight and bias, so `sigmoid(logits)` is "
        "the calibrated probability for traffic at the base rates, in every consumer."
    )
    reference = fitted.get("reference")
    if reference:
        agreement = fitted.get("agreement_with_reference") or {}
        intro = [
            "Platt scaling per label (p = sigmoid(a * z + b) on the head's logit z), then a "
            "prior correction from the label rate of this model's training rows (training "
            "rate) to the base rate: the logit moves by logit(base rate) - logit(training "
            f"rate). {folded}",
            "",
            f"This model was trained on all rows, so none were left to fit a and b on: they "
            f"were fitted on {calibration.fitted_on} ({calibration.rows} rows). "
            f"`{reference['model_name']}` `{reference['model_version']}` is the same recipe "
            f"trained on that split only, with its own maps fitted on {reference['fitted_on']} "
            f"({reference['rows']} rows). Its thresholds are that model's too. How closely the "
            "two agree on those texts (mean |difference| of probabilities / share of equal "
            "flags): "
            + ", ".join(
                f"{label} {row['mean_abs_difference']:.4f} / {row['flag_agreement']:.2%}"
                for label, row in agreement.items()
            )
            + f". The ECE columns are that model's, on its held-out rows (this one has none "
            f"to measure them on). {ece}",
        ]
    else:
        intro = [
            f"Platt scaling per label (p = sigmoid(a * z + b) on the head's logit z), fitted on "
            f"{calibration.fitted_on} ({calibration.rows} rows), then a prior correction from "
            "the label rates of those rows (training rate) to the base rate: the logit moves "
            f"by logit(base rate) - logit(training rate). {folded} {ece} Measured on the same "
            "rows."
        ]
    lines = [
        "",
        "## Calibration",
        "",
        *intro,
        "",
        "| label | training rate | base rate | a | b | shift | ECE before | ECE after | floor |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label in contract.labels:
        entry, row = calibration.labels[label], table.get(label, {})
        lines.append(
            f"| {label} | {format_metric(training.get(label), 4)} "
            f"| {format_metric(base.get(label), 4)} "
            + (
                f"| {entry.slope:.3f} | {entry.intercept:+.3f} "
                if entry.fitted
                else "| not fitted | not fitted "
            )
            + f"| {entry.prior_shift:+.3f} | {format_metric(row.get('ece_before'))} "
            f"| {format_metric(row.get('ece_after'))} | {format_metric(row.get('ece_floor'))} |"
        )
    return lines
