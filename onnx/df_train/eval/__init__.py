"""Closed-loop evaluations with the Rust planner in the loop."""
