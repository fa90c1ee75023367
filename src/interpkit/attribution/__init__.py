"""Attribution: gradient-based estimates of patching effects, and attention-head scores."""

from interpkit.attribution.atp import AttributionError as AttributionError
from interpkit.attribution.atp import atp as atp
from interpkit.attribution.atp import spearman as spearman

__all__ = ["AttributionError", "atp", "spearman"]
