"""tsd_ray: Ray-distributed target sound detection with mixed supervision (two-student method).

The package is layered; each subpackage imports only the ones above it in this list
(``tests/common/test_layering.py`` enforces it; docs/architecture.md draws it):

- ``common``: config, storage, value types, Ray environment, software environment record
- ``data``, ``metrics``, ``models``: corpora to feature shards; post-processing and scoring;
  the networks and their checkpoint files
- ``train``: phases, losses, the training worker and driver, encoder pretraining
- ``evaluate``: prediction and reports
- ``experiments``: the ledger, Algorithm 1 with its baselines, Ray Tune
- ``apps``: detection on a user's recordings, plots, command-line helpers
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tsd_ray")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0.1.0"

__all__ = ["__version__"]
