"""What a finished job prints: the front, where the outputs are, how to open MLflow."""

from __future__ import annotations

from slimtune.result import REFERENCE_LABELS as REFERENCE_NAMES
from slimtune.results.front import read_links
from slimtune.results.outcome import JobOutcome
from slimtune.results.tracking import absolute_uri, ui_command


def front_table(outcome: JobOutcome) -> str:
    """The Pareto front (and the baseline) as an aligned text table."""
    rows = [("trial", "val_acc", "test_acc", "latency_ms", "size_kB", "MACs_M", "params_k")]
    b = outcome.baseline
    rows.append(("baseline", f"{b['accuracy']:.4f}", f"{b['test_accuracy']:.4f}",
                 f"{b['latency_ms']:.3f}", f"{b['size_bytes'] / 1e3:.1f}",
                 f"{b['macs'] / 1e6:.2f}", f"{b['params'] / 1e3:.1f}"))
    for r in outcome.front:
        star = "*" if outcome.best and r.trial_id == outcome.best.trial_id else ""
        rows.append((f"{r.trial_id}{star}", f"{r.accuracy:.4f}", f"{r.test_accuracy:.4f}",
                     f"{r.latency_ms:.3f}", f"{(r.size_bytes or 0) / 1e3:.1f}",
                     f"{(r.macs or 0) / 1e6:.2f}", f"{(r.params or 0) / 1e3:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True))
                     for row in rows)




def reference_lines(outcome: JobOutcome) -> list[str]:
    """The search's own best beside each reference a user would make by hand, finalized
    by the same recipe and timed by the same paired protocol, with the differences."""
    finals = [r for r in outcome.results if r.has_model and r.feasible]
    searched = max((r for r in finals if not r.reference), default=None,
                   key=lambda r: (r.accuracy or 0.0, -(r.latency_ms or 0.0)))
    lines = []
    if searched is not None:
        lines.append(f"  {'search':16s} val {searched.accuracy:.4f} test "
                     f"{searched.test_accuracy or 0:.4f} at {_ratio(searched)} of the "
                     f"baseline (#{searched.trial_id})")
    for r in outcome.results:
        if r.reference not in REFERENCE_NAMES:  # a searched row, or a latency anchor
            continue
        name = REFERENCE_NAMES[r.reference]
        if r.stage != "final" or r.accuracy is None:
            lines.append(f"  {name:16s} {_ratio(r)} of the baseline's latency: over the budget"
                         if r.state == "infeasible" else f"  {name:16s} {r.state}")
            continue
        if searched is not None and r.model_of == searched.trial_id:
            lines.append(f"  {name:16s} val {r.accuracy:.4f} test {r.test_accuracy or 0:.4f} "
                         f"at {_ratio(r)} of the baseline (#{r.trial_id}): the search's best "
                         f"is this policy, one model fine-tuned once for both")
            continue
        shared = "" if r.model_of is None else f" (the search's #{r.model_of}: one model)"
        diff = "" if searched is None else \
            f"; search {100 * ((searched.accuracy or 0) - r.accuracy):+.2f} pp val, " \
            f"{100 * ((searched.test_accuracy or 0) - (r.test_accuracy or 0)):+.2f} pp test"
        within = "" if r.feasible else " (over the budget after all)"
        same = "" if searched is None or searched.policy.key() != r.policy.key() else \
            " (the search's best is this policy: the difference is fine-tune noise)"
        lines.append(f"  {name:16s} val {r.accuracy:.4f} test {r.test_accuracy or 0:.4f} at "
                     f"{_ratio(r)} of the baseline (#{r.trial_id}){shared}{within}{diff}{same}")
    best = outcome.best
    if best is not None and best.reference:
        name = REFERENCE_NAMES.get(best.reference, best.reference)
        found = searched is not None and searched.policy.key() == best.policy.key()
        lines.append(f"  best model: the {name} reference (#{best.trial_id}), " + (
            f"the same policy as the search's best (#{searched.trial_id})" if found
            else "the search found nothing better on validation"))
    return lines


def _ratio(r) -> str:
    return f"{r.latency_ratio:.2f}x" if r.latency_ratio is not None else "?"


def failure_line(outcome: JobOutcome) -> str | None:
    """Why a finished job failed, in one line, when every trial it searched failed (an
    exception inside each, not a trial over the budget); None when one at least succeeded.

    References (int8 only, uniform pruning) are not the search: their success alone does
    not make a search whose every candidate failed a successful job.
    """
    searched = [r for r in outcome.results if not r.reference]
    if searched and any(r.state != "failed" for r in searched):
        return None
    if not searched:
        return "the job ran no trial"
    errors = [r.error for r in searched if r.error]
    first = " ".join(errors[0].split())[:300] if errors else "no error recorded"
    return (f"all {len(searched)} trials failed (first error: {first}); see "
            f"{outcome.out_dir / 'trials.jsonl'}")


def print_summary(outcome: JobOutcome) -> None:
    out = outcome.out_dir.resolve()
    n = len(outcome.results)
    feasible = sum(r.feasible for r in outcome.results)
    failed = sum(r.state == "failed" for r in outcome.results)
    if any(r.stage == "scored" or r.score is not None for r in outcome.results):
        measured = [r for r in outcome.results if r.stage != "scored" and not r.reference]
        # a reference whose model is a searched row's was not fine-tuned again
        finals = [r for r in outcome.results if r.stage == "final" and r.model_of is None]
        print(f"\n{n} candidates scored, {len(measured)} timed paired with the baseline "
              f"({sum(r.feasible for r in measured)} within the {outcome.budget_ms:.3f} ms "
              f"budget), {len(finals)} fine-tuned, {failed} failed, in "
              f"{outcome.wall_seconds:.0f} s; hypervolume {outcome.hypervolume:.4f}")
    else:
        print(f"\n{n} trials ({feasible} within the {outcome.budget_ms:.3f} ms budget, "
              f"{failed} failed) in {outcome.wall_seconds:.0f} s; hypervolume "
              f"{outcome.hypervolume:.4f}")
    refs = reference_lines(outcome)
    if refs:
        print("References (what you would get by hand; same fine-tune, same paired timing):")
        print("\n".join(refs))
    print(f"Pareto front (* = best feasible by validation accuracy):\n{front_table(outcome)}\n")
    print(f"front:      {out / 'pareto.json'}  {out / 'pareto.png'}")
    if outcome.best is not None:
        print(f"best model: {out / 'best'}  (policy.json, model.onnx, model.pt)")
    else:
        print("best model: none (no trial met the budget)")
    print(f"trials:     {out / 'trials.jsonl'}")
    print(f"MLflow:     {absolute_uri(outcome.tracking_uri)}  (experiment run "
          f"{outcome.parent_run_id})")
    links = read_links(out)
    for model in links.models if links else []:
        if model.get("registered"):
            print(f"registered: {model['registered']}  (trial {model['trial']}"
                  f"{', alias best' if model.get('best') else ''})")
    print(f"MLflow UI:  {ui_command(outcome.tracking_uri)}")
    if links is not None:  # MLflow 3 opens on its GenAI view: these open the training runs
        print(f"  then open the job's trials: {links.runs_url}")
        print(f"  its Pareto front only:      {links.front_url}")
        print(f"  the front as a chart:       {links.chart_url}")
        print("    (Add chart > Scatter chart, X axis latency_ms, Y axis accuracy)")
        print(f"  the front table:            {links.table_url}")
        print(f"  the parent run (artifacts): {links.parent_url}")
