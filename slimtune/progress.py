"""The terminal progress bar: trials done, best feasible accuracy, front size, elapsed."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from tqdm import tqdm

from slimtune.result import TrialResult
from slimtune.results.pareto import best_feasible, pareto_front


class Progress:
    """A tqdm bar on stderr, updated as trials finish."""

    def __init__(self, trials: int, budget_ms: float) -> None:
        self.budget_ms = budget_ms
        self.bar = tqdm(total=trials, desc="trials", unit="trial", file=sys.stderr,
                        dynamic_ncols=True, bar_format="{desc} {n_fmt}/{total_fmt} "
                        "|{bar:20}| {postfix} [{elapsed}]")
        self.bar.set_postfix_str("best feasible acc -, front 0")
        self._closed = False

    def update(self, results: Sequence[TrialResult]) -> None:
        best = best_feasible(results)
        best_text = f"{best.accuracy:.4f} (#{best.trial_id})" if best else "-"
        failed = sum(r.state == "failed" for r in results)
        extra = f", failed {failed}" if failed else ""
        self.bar.set_postfix_str(
            f"best feasible acc {best_text}, front {len(pareto_front(results))}{extra}",
            refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if not self._closed:
            self.bar.close()
            self._closed = True


class ScoringProgress:
    """A tqdm bar on stderr for a scoring search: candidates scored, the best score so
    far, how many the screen dropped; then one line a stage."""

    def __init__(self, candidates: int) -> None:
        self.bar = tqdm(total=candidates, desc="candidates", unit="cand", file=sys.stderr,
                        dynamic_ncols=True, bar_format="{desc} {n_fmt}/{total_fmt} "
                        "|{bar:20}| {postfix} [{elapsed}]")
        self.best = 0.0
        self.screened = 0
        self._closed = False

    def update(self, row: TrialResult) -> None:
        if row.score is None:
            self.screened += 1
        else:
            self.best = max(self.best, row.score)
        self.bar.set_postfix_str(f"best score {self.best:.4f}, screened out {self.screened}",
                                 refresh=False)
        self.bar.update(1)
        if self.bar.n >= self.bar.total:
            self.close()

    def close(self) -> None:
        if not self._closed:
            self.bar.close()
            self._closed = True
