"""Metrics: multi-label (per-class thresholds, weighted P/R/F1), clustering, binary, detection."""
