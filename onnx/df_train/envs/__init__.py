"""Simulated tasks the planner is evaluated on."""
