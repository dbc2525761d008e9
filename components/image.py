"""The container image every component runs in: `MEDSSL_IMAGE` at compile time, else the
project's published image (built from the repository's Dockerfile)."""

import os

DEFAULT_IMAGE = "ghcr.io/medssl/medssl:latest"
IMAGE = os.environ.get("MEDSSL_IMAGE", "").strip() or DEFAULT_IMAGE
