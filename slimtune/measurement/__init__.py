"""Measurement: latency timed on the target, and what the search predicts from it.

``latency`` times one model (protocol, stats, the machine lock); ``targets`` runs that on
a named target (this machine, or a Ray node) and caches it; ``paired`` times a candidate
interleaved with the baseline; ``layer_lut``, ``shapes`` and ``predictor`` build the
per-layer table a policy's latency is predicted from, ``policy_timing`` its calibration;
``screening`` turns predictions into the search's admit/reject with a learnt margin.
"""
