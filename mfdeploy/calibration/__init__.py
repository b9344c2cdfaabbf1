"""Calibration data, INT8 (Q/DQ) and FP16 precision graphs, calibration reports."""
