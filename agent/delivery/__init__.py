"""Delivery: message building, suppression, the outbox ledger and channels."""
