"""Model families behind one registry: ``build_model(cfg, in_chans=, head_sizes=, input_shape=)``."""

from train.models.registry import (
    Family,
    build_model,
    get_family,
    list_families,
    register_family,
    resolve_family,
)

__all__ = ["Family", "build_model", "resolve_family", "get_family", "list_families", "register_family"]
