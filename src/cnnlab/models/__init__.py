"""Models: a registry of classifiers that all expose forward_features / forward_head / reset_classifier."""

from cnnlab.models.registry import create_model, describe_model, list_models, list_pretrained

__all__ = ["create_model", "describe_model", "list_models", "list_pretrained"]
