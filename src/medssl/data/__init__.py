"""Dataset contract, synthetic archives, datasets and samplers."""
