"""Filter importance criteria: group in, one score per channel out, no mutation."""

from __future__ import annotations

import torch_pruning as tp

from kubeslim.api.spec import Criterion


def importance_for(criterion: Criterion) -> tp.importance.Importance:
    """torch-pruning's implementation of the criterion.

    Scores are mean-normalised within a group, so they can also be ranked
    across groups (globalRanking).
    """
    if criterion is Criterion.geometric_median:
        return tp.importance.FPGMImportance(p=2)
    if criterion is Criterion.l1:
        return tp.importance.MagnitudeImportance(p=1)
    return tp.importance.MagnitudeImportance(p=2)
