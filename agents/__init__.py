"""Learning agents (PPO via stable-baselines3) that propose policies and transfer them.

Planned in the issue "AMC-style gymnasium environment, PPO agents, and policies reused
on new models"; this version ships no agent yet.
"""
