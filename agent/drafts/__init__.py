"""The approval queue: drafts an operator approves, rejects or edits before anything is sent."""

from agent.drafts.store import APPROVED, AWAITING, REJECTED, Draft, DraftStore

__all__ = ["APPROVED", "AWAITING", "REJECTED", "Draft", "DraftStore"]
