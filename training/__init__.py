"""Fine-tuning Vigil's models on a site's annotated footage.

Importers, feature caching, the training loop and evaluation live here; the
``vigil train`` and ``vigil eval`` commands are built on this package.
"""
