"""The AMC-style gymnasium environment (one layer per step) over a LayerTable.

Planned in the issue "AMC-style gymnasium environment, PPO agents, and policies reused
on new models"; this version ships no environment yet.
"""
