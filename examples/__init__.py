"""Worked examples of a user's own data and model (see README "Your data")."""
