"""Training methods. A method is one module here plus one entry in `METHODS`, which maps the
params.yaml name (`train.method`) to its class; the engine, stages and pipelines do not change."""

from __future__ import annotations

from medssl.engine.method import Method, StepOutput
from medssl.errors import ConfigError
from medssl.methods.base import MultilabelMethod
from medssl.methods.supervised import Supervised

METHODS: dict[str, type[Method]] = {
    Supervised.name: Supervised,
}


def get_method(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        known = ", ".join(sorted(METHODS))
        raise ConfigError(f"unknown train.method {name!r} (known: {known})") from None


__all__ = ["METHODS", "Method", "MultilabelMethod", "StepOutput", "Supervised", "get_method"]
