"""vprompt: pixel-level visual prompting (EVP) and its baselines for frozen pre-trained vision models.

The public API, importable without loading any model::

    from vprompt import RunConfig, fit, create_prompter, create_backbone, create_dataset
"""

from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "RunConfig": "config",
    "resolve_config": "config",
    "list_methods": "config",
    "fit": "engine",
    "evaluate": "engine",
    "evaluate_checkpoint": "engine",
    "train_one_epoch": "engine",
    "create_prompter": "prompters",
    "list_prompters": "prompters",
    "create_backbone": "backbones",
    "list_models": "backbones",
    "create_diversity": "diversity",
    "NormalizedGradient": "optim",
    "create_dataset": "data",
    "list_datasets": "data",
    "prepare_data": "data",
    "PromptedModel": "build",
    "build_model": "build",
    "ClipTextHead": "heads",
    "build_text_classifier": "heads",
    "LabelMappingHead": "heads",
    "LinearHead": "heads",
    "ClassifierBackbone": "classifiers",
    "fit_linear_probe": "linprobe",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):  # lazy: `import vprompt` stays cheap (no torch until something is used)
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'vprompt' has no attribute {name!r}")
