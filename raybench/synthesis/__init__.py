"""Anomaly synthesis: normal image(s) -> anomalous training sample (+ its mask)."""
