"""The scoring search: score many candidates cheaply, time the best, fine-tune the winners.

```
searcher.ask ──> screen (predicted latency x learnt margin) ──> evaluator.score (Ray actors)
     ^                                                              │
     └──────────── tell(score, predicted latency) ──────────────────┘
scored rows ──> measure (deployed, timed paired with the baseline) ──> screen.record
measured rows within budget, best scores (+ the references) ──> finalize (fine-tune, Ray tasks)
```

Stages in order: :mod:`.score`, :mod:`.measure`, :mod:`.finalize`; the hand-made
baselines a user would otherwise pick come from :mod:`.references`.
"""

from slimtune.pipeline.run import ScoringSearch, run_scoring_search

__all__ = ["ScoringSearch", "run_scoring_search"]
