"""resolve-config: the run's params (defaults + `params` + scalar overrides), validated once."""

from typing import NamedTuple

from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def resolve_config(
    params: dict,
    data_size: str,
    data_seed: int,
    pretrain_method: str,
    pretrain_max_epochs: int,
    pretrain_max_steps: int,
    train_init: str,
    train_lr: float,
    train_max_epochs: int,
    train_max_steps: int,
    train_backbone: str,
    train_label_fraction: float,
    train_seed: int,
    register_margin: float,
    register_model_name: str,
) -> NamedTuple(
    "ConfigOutputs", [("params", dict), ("data", dict), ("validate", dict), ("split", dict)]
):
    """The resolved params.yaml (`params` output) and the part each cached step reads; a bad
    value fails here with a one-line error. pretrain_max_steps / train_max_steps 0 and
    register_model_name '' mean the defaults (no step budget; abdominal-organs)."""
    scalars = {name: value for name, value in locals().items() if name != "params"}
    from collections import namedtuple

    from medssl.orchestration import params_argument, resolve_params, step_config

    cfg = resolve_params(params, **scalars)  # it refuses a name it does not know
    outputs = namedtuple("ConfigOutputs", ["params", "data", "validate", "split"])
    return outputs(
        params_argument(cfg),
        step_config(cfg, "data"),
        step_config(cfg, "validate"),
        step_config(cfg, "split"),
    )


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def override_params(params: dict, overrides: list) -> dict:
    """The resolved params with `section.key=value` overrides (the -S syntax), validated: one
    pipeline's steps that run different methods (pretrain lsd, then convirt) share one config."""
    from medssl.config import build_params
    from medssl.orchestration import params_argument

    return params_argument(build_params(dict(params), [str(o) for o in overrides]))
