"""Synthetic data generators for the embedded default datasets."""
