"""Diffusion Forcing training, ONNX export and reference sampling for df_planner."""

CONTRACT_VERSION = "1.1"
