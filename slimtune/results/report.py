"""The behaviour report of a job: one self-contained HTML file (figures as base64 PNG).

Baseline against the chosen compressed model(s) (default: the best feasible trial):
a table of every metric, per-class accuracy bars, reliability diagrams, saliency maps
side by side, and a table of all trials with their constraint violations. Built from
the output directory alone (``pareto.json``, ``trials.jsonl``, ``job.yaml``,
``baseline/saliency.npz``, ``trials/ID/saliency.npy``).
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from slimtune.errors import UserInputError
from slimtune.evaluate.registry import BOUNDS, GROUPS, OBJECTIVES
from slimtune.policy import write_text_atomic
from slimtune.result import TrialResult
from slimtune.results.outputs import read_trials

_ROWS = (  # (key, label) of the metric table, in order
    ("accuracy", "validation accuracy"), ("test_accuracy", "test accuracy"),
    ("latency_ms", "latency (ms, median)"), ("size_bytes", "size (bytes, packed)"),
    ("macs", "MACs"),
    ("worst_class_accuracy", "worst-class accuracy"),
    ("worst_class_drop_pp", "worst-class drop vs baseline (pp)"),
    ("agreement", "top-1 agreement with baseline"),
    ("exemplar_accuracy", "accuracy on exemplars (top 5% divergence)"),
    ("exemplar_baseline_accuracy", "baseline accuracy on the same exemplars"),
    ("ece", "expected calibration error (15 bins)"), ("nll", "negative log-likelihood"),
    ("robust_clean_accuracy", "clean accuracy, robustness subset (torch)"),
    ("fgsm_accuracy", "FGSM accuracy"), ("pgd_accuracy", "PGD accuracy"),
    ("noise_accuracy", "Gaussian-noise accuracy"),
    ("mia_advantage", "membership-inference advantage"),
    ("generalization_gap", "generalisation gap (train - test acc)"),
    ("saliency_rank_corr", "saliency rank correlation with baseline"),
    ("evaluate_seconds", "time spent on these metrics (s)"),
)
_CSS = """body{font-family:sans-serif;margin:24px;max-width:1150px;color:#222}
table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
.bad{background:#fde0dc}.note{color:#555;font-size:90%}img{max-width:100%}"""


def _load(out_dir: Path) -> tuple[dict[str, Any], list[TrialResult], dict[str, Any]]:
    pareto = out_dir / "pareto.json"
    if not pareto.is_file():
        raise UserInputError(f"{out_dir}: no pareto.json (is it a finished job's --out?)")
    info = json.loads(pareto.read_text())
    trials = read_trials(out_dir)
    job = yaml.safe_load((out_dir / "job.yaml").read_text()) if (
        out_dir / "job.yaml").is_file() else {}
    return info, trials, job


def choose_trials(info: dict[str, Any], trials: Sequence[TrialResult],
                  wanted: Sequence[int] | None) -> list[TrialResult]:
    """The trials a report shows: ``wanted``, else the best feasible one, else the most
    accurate trial that has behaviour metrics. Unknown or unevaluated ids are refused."""
    evaluated = {t.trial_id: t for t in trials if t.metrics}
    if wanted:
        missing = [i for i in wanted if i not in evaluated]
        if missing:
            raise UserInputError(f"trial {missing[0]} has no behaviour metrics in this job "
                                 f"(trials with metrics: {sorted(evaluated)})")
        return [evaluated[i] for i in wanted]
    best = info.get("best_trial")
    if best in evaluated:
        return [evaluated[best]]
    if not evaluated:
        raise UserInputError("no trial of this job has behaviour metrics (every trial "
                             "stopped at the latency gate or failed)")
    return [max(evaluated.values(), key=lambda t: t.accuracy or 0.0)]


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return html.escape(str(value))


def _value(source: dict[str, Any], key: str) -> Any:
    return source.get(key, source.get("metrics", {}).get(key))


def _class_names(job: dict[str, Any], n: int) -> list[str]:
    if job.get("data", {}).get("dataset") == "fashion-mnist":
        from slimtune.data import FASHION_MNIST_CLASSES

        return list(FASHION_MNIST_CLASSES)[:n]
    return [str(i) for i in range(n)]


def _per_class_figure(models: list[tuple[str, dict]], names: list[str]) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 3.6))
    width = 0.8 / len(models)
    for i, (label, row) in enumerate(models):
        acc = [np.nan if a is None else a for a in row["per_class_accuracy"]]
        ax.bar(np.arange(len(acc)) + (i - (len(models) - 1) / 2) * width, acc, width,
               label=label)
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title("per-class accuracy")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _reliability_figure(models: list[tuple[str, dict]]) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(models), figsize=(3.6 * len(models), 3.6), squeeze=False)
    for ax, (label, row) in zip(axes[0], models, strict=True):
        width = row["reliability_bins"][0]["hi"] - row["reliability_bins"][0]["lo"]
        bins = [b for b in row["reliability_bins"] if b["count"]]  # empty bins: no bar
        centers = [(b["lo"] + b["hi"]) / 2 for b in bins]
        acc = [b["accuracy"] for b in bins]
        conf = [b["confidence"] for b in bins]
        ax.bar(centers, acc, width * 0.95, color="tab:blue", label="accuracy")
        ax.scatter(centers, conf, marker="_", s=120, color="tab:red", zorder=3,
                   label="mean confidence")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_title(f"{label}: ECE {row['ece']:.3f}", fontsize=9)
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return _png(fig)


def _saliency_figure(out_dir: Path, chosen: list[TrialResult], names: list[str]) -> str | None:
    base = out_dir / "baseline" / "saliency.npz"
    maps = [out_dir / "trials" / str(t.trial_id) / "saliency.npy" for t in chosen]
    if not base.is_file() or not all(p.is_file() for p in maps):
        return None
    import matplotlib.pyplot as plt

    saved = np.load(base)
    columns = [("input", saved["inputs"][:, 0]), ("baseline", saved["maps"])]
    columns += [(f"trial {t.trial_id}", np.load(p)) for t, p in zip(chosen, maps, strict=True)]
    rows = min(len(c[1]) for c in columns)
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.7 * len(columns), 1.7 * rows),
                             squeeze=False)
    for r in range(rows):
        for c, (title, images) in enumerate(columns):
            ax = axes[r][c]
            ax.imshow(images[r], cmap="gray" if c == 0 else "inferno")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
        label = int(saved["labels"][r])
        axes[r][0].set_ylabel(names[label] if label < len(names) else str(label), fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _metric_table(models: list[tuple[str, dict]], constraints: dict[str, float]) -> str:
    head = "".join(f"<th>{html.escape(label)}</th>" for label, _ in models)
    lines = [f"<table><tr><th>metric</th><th>better</th><th>bound</th>{head}</tr>"]
    for key, label in _ROWS:
        values = [_value(row, key) for _, row in models]
        if all(v is None for v in values):
            continue
        better = {"maximize": "↑", "minimize": "↓"}.get(OBJECTIVES.get(key, ""), "")
        bound = constraints.get(key)
        op = "≤" if key in BOUNDS and BOUNDS[key].direction == "max" else "≥"
        cells = []
        for (name, _), v in zip(models, values, strict=True):
            bad = (bound is not None and v is not None and name != "baseline"
                   and ((op == "≤" and v > bound) or (op == "≥" and v < bound)))
            cells.append(f'<td{" class=bad" if bad else ""}>{_fmt(v)}</td>')
        lines.append(f"<tr><td>{html.escape(label)} <code>{key}</code></td><td>{better}</td>"
                     f"<td>{'' if bound is None else f'{op} {bound:g}'}</td>{''.join(cells)}</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _trials_table(trials: Sequence[TrialResult]) -> str:
    keys = ("worst_class_drop_pp", "agreement", "ece", "fgsm_accuracy", "mia_advantage",
            "saliency_rank_corr")
    shown = [k for k in keys if any(k in t.metrics for t in trials)]
    head = "".join(f"<th>{k}</th>" for k in shown)
    lines = ["<table><tr><th>trial</th><th>state</th><th>val acc</th><th>latency ms</th>"
             f"{head}<th>violations</th></tr>"]
    for t in trials:
        cells = "".join(f"<td>{_fmt(t.metrics.get(k))}</td>" for k in shown)
        lines.append(f"<tr><td>{t.trial_id}</td><td>{t.state}</td><td>{_fmt(t.accuracy)}</td>"
                     f"<td>{_fmt(t.latency_ms)}</td>{cells}"
                     f"<td>{html.escape(', '.join(t.violations))}</td></tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _definitions() -> str:
    from slimtune.evaluate import calibration, per_class, privacy, robustness, saliency

    return (
        "<ul class=note>"
        f"<li>Test split of the job. per_class, agreement, calibration: the whole test split, "
        f"deployed model (ONNX). Exemplars: the {per_class.EXEMPLAR_FRACTION:.0%} of test "
        "examples with the largest total-variation distance between the two softmax outputs "
        f"(Hooker et al. 2019). ECE: {calibration.ECE_BINS} equal-width bins.</li>"
        f"<li>Robustness: first {robustness.ROBUST_SIZE} test examples; FGSM and "
        f"{robustness.PGD_STEPS}-step PGD at L-inf eps {robustness.ATTACK_EPS} in normalised "
        "input units on the fine-tuned torch model with fake-quantised weights; Gaussian "
        f"noise std {robustness.NOISE_STD} (same units) on the deployed model.</li>"
        f"<li>Privacy: loss-threshold attack, {privacy.PRIVACY_SIZE} training members vs "
        f"{privacy.PRIVACY_SIZE} test non-members; advantage = max TPR - FPR.</li>"
        f"<li>Saliency: |d logit_true / d input| on the first {saliency.SALIENCY_SIZE} test "
        "examples, Spearman rank correlation with the baseline's, averaged.</li>"
        "<li>Constraints are checked on these test-split figures, so a search with "
        "constraints also selects on the test split; keep a separate held-out set for an "
        "untouched estimate.</li></ul>")


def build_report(out_dir: Path, trial_ids: Sequence[int] | None = None) -> str:
    """The report's HTML for a job's output directory."""
    info, trials, job = _load(out_dir)
    chosen = choose_trials(info, trials, trial_ids)
    base = dict(info.get("baseline", {}))
    base.update(base.pop("metrics", {}) or {})
    models = [("baseline", base)] + [(f"trial {t.trial_id}", t.to_dict()) for t in chosen]
    constraints = info.get("constraints") or {}
    names = _class_names(job, len(chosen[0].metrics.get("per_class_accuracy", [])))
    groups = [g for g in GROUPS if any(k in chosen[0].metrics for k in GROUPS[g].keys)]
    parts = [f"<h1>slimtune behaviour report: {html.escape(str(job.get('name', out_dir.name)))}"
             "</h1>",
             f"<p>Baseline against {', '.join(lbl for lbl, _ in models[1:])}; budget "
             f"{_fmt(info.get('budget_ms'))} ms; {len(trials)} trials "
             f"({sum(t.feasible for t in trials)} feasible). Groups computed: "
             f"{', '.join(groups)}"
             f". Constraints: {html.escape(json.dumps(constraints)) if constraints else 'none'}."
             "</p>", "<h2>Metrics</h2>", _metric_table(models, constraints)]
    have = [(lbl, row) for lbl, row in models if row.get("per_class_accuracy")]
    if len(have) == len(models):
        parts += ["<h2>Per-class accuracy</h2>", _per_class_figure(models, names)]
    if all(row.get("reliability_bins") for _, row in models):
        parts += ["<h2>Reliability diagrams</h2>", _reliability_figure(models)]
    sal = _saliency_figure(out_dir, chosen, names)
    parts += ["<h2>Saliency maps</h2>", sal or "<p class=note>not computed (add "
              "<code>saliency</code> to <code>evaluate</code> in the spec)</p>"]
    parts += ["<h2>All trials</h2>", _trials_table(trials), "<h2>Definitions</h2>",
              _definitions()]
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>slimtune report</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def write_report(out_dir: Path, path: Path, trial_ids: Sequence[int] | None = None) -> Path:
    """Build the report and write it atomically to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    write_text_atomic(path, build_report(out_dir, trial_ids))
    return path
