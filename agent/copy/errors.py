"""Why a draft was refused: one ``PayloadError`` subclass per copy check, each with its own ``code``.

::

    PayloadError
    └── CopyRejected              a draft, or the lead data behind it, failed a check
        ├── UnresolvedPlaceholder     {{ }}, {% %}, [First Name], {first_name}, <<name>> left in the text
        ├── TooLong                   a subject or body over the step's limits (or a subject on two lines)
        ├── MissingFooter             the message as sent would lack the postal address or the opt-out
        ├── InventedLink              a link or address the template and the lead never contained
        ├── UnsupportedFact           a "fact" the model used that the lead record does not hold
        └── PromptInjection           instruction-like text in lead data, or echoed by the model

The engine reports a failed lead with its error's ``code``, so an operator reads
``prompt_injection`` or ``too_long`` as the lead's reason; ``field`` says where
(``lead.notes``, ``template.body``, ``llm.body``...).
"""

from __future__ import annotations

from agent.errors import PayloadError

__all__ = ["CopyRejected", "UnresolvedPlaceholder", "TooLong", "MissingFooter", "InventedLink",
           "UnsupportedFact", "PromptInjection"]


class CopyRejected(PayloadError):
    """A copy check refused a draft; ``check`` is the check's name (also its ``code``)."""

    code = "copy_rejected"

    @property
    def check(self) -> str:
        return self.code


class UnresolvedPlaceholder(CopyRejected):
    code = "unresolved_placeholder"


class TooLong(CopyRejected):
    code = "too_long"


class MissingFooter(CopyRejected):
    code = "missing_footer"


class InventedLink(CopyRejected):
    code = "invented_link"


class UnsupportedFact(CopyRejected):
    code = "unsupported_fact"


class PromptInjection(CopyRejected):
    code = "prompt_injection"
