"""Copy: what the copywriter needs beyond rendering a template.

- ``checks``: the output checks every draft passes before it may reach the outbox;
- ``injection``: instruction-like text in lead data or in a model's answer;
- ``prompt`` / ``personalise``: the optional LLM step, schema-bound, its facts traced;
- ``variants``: A/B arms, drawn deterministically and kept once assigned;
- ``errors``: one ``CopyRejected`` subclass per check, each with its own code.
"""

from agent.copy.errors import (
    CopyRejected,
    InventedLink,
    MissingFooter,
    PromptInjection,
    TooLong,
    UnresolvedPlaceholder,
    UnsupportedFact,
)
from agent.copy.variants import VariantStore, pick_variant, variant_counts

__all__ = [
    # errors
    "CopyRejected", "UnresolvedPlaceholder", "TooLong", "MissingFooter", "InventedLink", "UnsupportedFact",
    "PromptInjection",
    # variants
    "VariantStore", "pick_variant", "variant_counts",
]
