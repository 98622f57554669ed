"""Results: what a job hands back, and where it is published.

``outputs`` writes and reads a job's directory (trials.jsonl, best/, the compressed
files); ``pareto`` computes fronts and the hypervolume, ``front`` publishes them to MLflow
(tags, the best model, its registration through ``registry``) and ``front_html`` draws
them; ``tracking`` is the MLflow client (a journal while the server is away);
``summary`` prints a finished job, ``report`` a trial's behaviour report.
"""
