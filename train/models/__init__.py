"""Model families behind one registry: ``build_model(cfg, in_chans=, head_sizes=, input_shape=)``."""

from train.models.registry import (
    Family,
    build_model,
    check_model_config,
    get_family,
    list_families,
    register_family,
)

__all__ = ["Family", "build_model", "check_model_config", "get_family", "list_families", "register_family"]
