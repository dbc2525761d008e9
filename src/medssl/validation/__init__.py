"""Data validation: great-expectations suites over the dataset tables plus image-file checks."""
