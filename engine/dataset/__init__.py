"""Dataset snapshots (DESIGN.md step 2): validation (``validate``), exact and near de-duplication
(``dedupe``), leak-free splits (``split``), the balance and readiness report (``report``), the
snapshot build and loader (``build``), imports of existing chat data (``importer``) and a
snapshot's held-out examples (``heldout``).

Nothing heavy is imported here: the tokenizer, ``datasets`` and ``datasketch`` are loaded by the
functions that use them.
"""

from engine.dataset.config import DatasetConfig, DatasetConfigError
from engine.dataset.findings import Entry, Finding, Origin

__all__ = ["DatasetConfig", "DatasetConfigError", "Entry", "Finding", "Origin"]
