"""Inbound mail: stored raw first, then classified by rules, matched to its thread and acted on.

``InboundStore`` keeps each message once; ``intake`` brings messages in from
files (``.eml``, mbox), an IMAP mailbox or the webhook; the
``ReplyOrchestrator`` classifies (``agent.inbound.classify``), matches
(``threads``), judges a reply's sentiment (``sentiment``) and acts.
"""
