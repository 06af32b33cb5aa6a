"""The models and their registry: ``model.kind`` in the config picks one.

Every model implements :class:`recsys.models.contract.RecModel` (the contract) in its own
module; training, export, indexing, serving and evaluation only ever talk to the contract.
Adding a model is one module here, one line in :data:`REGISTRY` and one config block
(``model.<kind>`` in conf/default.yaml, typed in recsys/config.py); ``model.kind``'s
allowed values are this registry's keys. Nothing heavy is imported until a model is built
(recsys.config imports this module for the registry alone).
"""

from __future__ import annotations

import importlib

from recsys.errors import ArtifactError

# model.kind -> (module, class)
REGISTRY = {
    "rating": ("recsys.models.rating_network", "RatingNetwork"),
    "bpr": ("recsys.models.bpr", "BPRMF"),
    "neumf": ("recsys.models.neumf", "NeuMF"),
    "sequential": ("recsys.models.sequential", "SequentialGRU"),
    "lightgcn": ("recsys.models.lightgcn", "LightGCN"),
}


def model_class(kind: str):
    """The contract class registered under ``kind``."""
    if kind not in REGISTRY:
        raise ArtifactError(f"unknown model kind {kind!r}; known: {', '.join(sorted(REGISTRY))}")
    module, name = REGISTRY[kind]
    return getattr(importlib.import_module(module), name)


def build_model(spec: dict, stats: dict, cfg):
    """A fresh model of kind ``cfg.kind`` (``cfg``: the config's ``model`` section), variables built.

    Args:
        spec: the manifest's ``features`` block; stats: the manifest's ``stats`` block.
    """
    model = model_class(cfg.kind)(spec, stats, cfg)
    model.build_variables()
    return model


def load_model(model_dir):
    """The trained model artifact in ``model_dir`` (see :class:`recsys.models.contract.ModelArtifact`)."""
    from recsys.models.contract import ModelArtifact

    return ModelArtifact.load(model_dir)
