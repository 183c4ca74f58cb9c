"""Adapters to other training loops. Each submodule imports its framework; this package imports none.

- ``taxaug.integrations.lightning``: ``TaxaugCallback`` for ``lightning.Trainer`` (``pip install taxaug[lightning]``).

There is no Composer adapter: Composer pins an older torch than taxaug's (see docs/algorithms.md).
"""
