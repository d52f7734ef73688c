"""Sequences: each lead's place in a campaign's steps, when its next step is due, and what stops it."""

from agent.sequences.store import ACTIVE, COMPLETED, PAUSED, STOPPED, Enrolment, EnrolmentStore

__all__ = ["EnrolmentStore", "Enrolment", "ACTIVE", "PAUSED", "STOPPED", "COMPLETED"]
