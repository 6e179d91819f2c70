"""pytest setup for the unit tests and the notebooks (nbval).

Tests and notebooks run in smoke mode (fast, CPU, synthetic demo data under ./data/demo) unless
DESCAN_SMOKE is already set; figures are drawn without a display.
"""
import os

os.environ.setdefault("DESCAN_SMOKE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
