"""Pipeline stages: plain functions called by the CLI, dvc.yaml, KFP components and Ray Tune."""
