"""Precision marketing: campaigns, audiences (affinity, propensity, lookalike), uplift, holdouts, export."""
