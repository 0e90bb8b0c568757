"""Write the artifact the worker serves: a `save_pretrained` directory with thresholds and card."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from training.modeling import HEAD_FILE, MeanPooledClassifier

log = logging.getLogger(__name__)

INFO_FILE = "training_info.json"
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


def weights_sha256(model_dir: Path) -> str:
    """sha256 of `model.safetensors`."""
    digest = hashlib.sha256()
    with open(model_dir / "model.safetensors", "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fmt(value: object, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "n/a"


def model_card(info: dict[str, object], config: dict[str, object]) -> str:
    """Markdown model card from the training info and the exported config."""
    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]  # type: ignore[index]
    thresholds: dict[str, float] = config.get("label_thresholds") or {}  # type: ignore[assignment]
    metrics: dict[str, object] = info.get("metrics") or {}  # type: ignore[assignment]
    per_label: dict[str, dict[str, object]] = metrics.get("labels") or {}  # type: ignore[assignment]
    n_params = info.get("parameters")
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-classification",
        "language: en",
        "tags: [toxicity, multi-label, moderation]",
        "---",
        "",
        f"# {config.get('model_name', 'moderation model')}",
        "",
        f"Multi-label toxicity classifier (`{config.get('model_type')}`, "
        f"{config.get('num_hidden_layers')} layers, hidden {config.get('hidden_size')}, "
        f"{config.get('num_attention_heads')} heads"
        + (f", {n_params:,} parameters" if isinstance(n_params, int) else "")
        + f"), version `{config.get('model_version')}`.",
        "",
        "## How it was made",
        "",
        f"- method: {info.get('method', 'fit')}",
        f"- base / initialisation: {info.get('base', 'n/a')}",
        f"- training data: {info.get('train_data', 'n/a')} ({info.get('train_rows', 'n/a')} rows)",
        f"- validation data: {info.get('val_data', 'n/a')} ({info.get('val_rows', 'n/a')} rows)",
    ]
    for key, value in (info.get("details") or {}).items():  # type: ignore[union-attr]
        lines.append(f"- {key}: {value}")
    if info.get("command"):
        lines.append(f"- command: `{info['command']}`")
    lines += [
        "",
        "## Validation metrics",
        "",
        f"- mean ROC-AUC: {_fmt(metrics.get('mean_roc_auc'))}",
        f"- mean PR-AUC: {_fmt(metrics.get('mean_pr_auc'))}",
        f"- mean BCE: {_fmt(metrics.get('bce'))}",
        f"- mean F1 at the thresholds below: {_fmt(metrics.get('mean_f1'))}",
        "",
        "| label | threshold | ROC-AUC | PR-AUC | F1 |",
        "|---|---|---|---|---|",
    ]
    for label in labels:
        m = per_label.get(label, {})
        lines.append(
            f"| {label} | {thresholds.get(label, 0.5):.3f} | {_fmt(m.get('roc_auc'))} "
            f"| {_fmt(m.get('pr_auc'))} | {_fmt(m.get('f1'))} |"
        )
    for note in info.get("notes") or []:  # type: ignore[union-attr]
        lines += ["", str(note)]
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
        "(chosen for max F1 on the validation split). Probabilities are not calibrated to real "
        "traffic base rates.",
        "",
    ]
    return "\n".join(lines)


def save_artifact(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: Path,
    *,
    thresholds: dict[str, float],
    info: dict[str, object],
    model_name: str | None = None,
    model_version: str | None = None,
    fp16: bool = False,
) -> Path:
    """Save weights (safetensors), tokenizer, config with thresholds/name/version, and card.

    fp16 stores half-precision weights while `config.dtype` stays float32, so stock loaders
    upcast them (CPU inference in fp16 is slow).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("model.safetensors", "model.safetensors.index.json"):
        (out_dir / stale).unlink(missing_ok=True)
    config = model.config
    labels = [config.id2label[i] for i in range(config.num_labels)]
    config.label_thresholds = {label: float(thresholds.get(label, 0.5)) for label in labels}
    config.problem_type = "multi_label_classification"
    config.model_name = model_name or out_dir.resolve().name
    info = dict(info)
    info["parameters"] = sum(p.numel() for p in model.parameters())
    dtype = torch.float16 if fp16 else torch.float32
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    if isinstance(model, MeanPooledClassifier):  # a teacher: encoder directory + head file
        parts: dict[str, dict[str, torch.Tensor]] = {"encoder": {}, "classifier": {}}
        for key, value in state.items():
            part, _, name = key.partition(".")
            if part in parts:
                parts[part][name] = value
        model.encoder.save_pretrained(out_dir, state_dict=parts["encoder"], safe_serialization=True)
        save_file(parts["classifier"], str(out_dir / HEAD_FILE))
    else:
        model.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
    save_tokenizer(tokenizer, out_dir)
    config.model_version = model_version or weights_sha256(out_dir)[:12]
    config.dtype = "float32"
    config.save_pretrained(out_dir)
    config_dict = json.loads((out_dir / "config.json").read_text())
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
    (out_dir / "README.md").write_text(model_card(info, config_dict))
    log.info("exported %s (version %s)", out_dir, config.model_version)
    return out_dir


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> None:
    """`save_pretrained` plus `vocab.txt` (WordPiece) and `special_tokens_map.json`."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # don't persist the truncation/padding state of the last call
        backend.no_truncation()
        backend.no_padding()
    tokenizer.save_pretrained(out_dir)
    if backend is not None and type(backend.model).__name__ == "WordPiece":
        vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
        if [i for _, i in vocab] == list(range(len(vocab))):
            (out_dir / "vocab.txt").write_text("".join(f"{tok}\n" for tok, _ in vocab))
    special = {k: str(v) for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def resolve_model_dir(source: Path) -> Path:
    """An artifact directory, or the `model/` directory inside a fit/distill run directory."""
    if (source / "config.json").is_file():
        return source
    if (source / "model" / "config.json").is_file():
        return source / "model"
    raise FileNotFoundError(f"{source}: neither an artifact nor a run directory (no config.json)")


def export_model(
    source: Path,
    out_dir: Path,
    *,
    fp16: bool = False,
    metrics_path: Path | None = None,
    model_name: str | None = None,
    model_version: str | None = None,
) -> Path:
    """Re-export a trained model (from a run or artifact directory) as a served artifact."""
    from training.modeling import load_classifier, load_tokenizer

    model_dir = resolve_model_dir(source)
    model = load_classifier(model_dir)
    tokenizer = load_tokenizer(model_dir)
    info_file = model_dir / INFO_FILE
    info: dict[str, object] = json.loads(info_file.read_text()) if info_file.is_file() else {}
    if metrics_path is not None:
        info["metrics"] = json.loads(metrics_path.read_text())
    thresholds = dict(getattr(model.config, "label_thresholds", None) or {})
    same = out_dir.resolve() == model_dir.resolve()
    save_artifact(
        model,
        tokenizer,
        out_dir,
        thresholds=thresholds,
        info=info,
        model_name=model_name or (getattr(model.config, "model_name", None) if same else None),
        model_version=model_version,
        fp16=fp16,
    )
    for extra in ("history.json",):
        src = model_dir / extra
        if src.is_file() and not same:
            shutil.copyfile(src, out_dir / extra)
    return out_dir


def copy_tokenizer_files(src: Path, dst: Path) -> None:
    """Copy the standard tokenizer files (used when a tokenizer directory is given separately)."""
    for name in _TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
