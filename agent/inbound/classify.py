"""Rules that classify an inbound message before any model sees it (RFC 3464, 3834, 5965, 8058).

``classify(message)`` is a pure function of the parsed message: run it again
on the stored raw bytes and it gives the same answer.  The rules, first match
wins:

1. **bounce**: an RFC 3464 DSN (per-recipient ``Action``/``Status``), or a
   mailer-daemon notice with a bounce subject and an SMTP code in its text.
2. **complaint**: an RFC 5965 ARF feedback report.
3. **out_of_office** / **auto_reply**: RFC 3834 headers, null or daemon
   senders, auto-reply subjects; an out-of-office note's return date is read.
4. **unsubscribe**: a human asking, in the subject or above the quote, to be
   taken off the list.
5. **reply**: everything else, threaded by ``In-Reply-To`` / ``References``.

It never raises: a rule that trips over a broken message is skipped, and a
message nothing can be read from is a ``reply`` with reason ``unparsed``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timezone
from email.message import EmailMessage, Message
from email.parser import HeaderParser
from email.policy import default as default_policy
from typing import Literal

from agent.inbound import rules
from agent.inbound.rules import header

__all__ = ["Classification", "BounceInfo", "classify", "Kind"]

Kind = Literal["bounce", "complaint", "auto_reply", "out_of_office", "unsubscribe", "reply"]
Severity = Literal["hard", "soft", "policy"]


@dataclass(frozen=True)
class BounceInfo:
    recipient: str | None  # Final-Recipient (or Original-Recipient), lower-cased address
    action: str | None  # failed | delayed | delivered | relayed | expanded
    status: str | None  # the RFC 3463 code, e.g. "5.1.1"
    severity: Literal["hard", "soft", "policy"]  # 5.x.x failed; 4.x.x / delayed; 5.7.x (our sending's problem)
    diagnostic: str | None  # Diagnostic-Code, trimmed, at most 200 characters
    original_recipient: str | None = None  # Original-Recipient when the DSN gives it: the address we wrote to


@dataclass(frozen=True)
class Classification:
    kind: Kind
    reason: str  # which rule decided, e.g. "dsn", "auto-submitted", "subject:out of office"
    bounces: tuple[BounceInfo, ...] = ()
    return_date: date | None = None  # out of office: the date the sender is back, when the text gives one
    # Correlation with what we sent: Message-ID / X-Send-Id found in the returned headers of a DSN or ARF,
    # else the In-Reply-To / References of a reply.
    original_message_ids: tuple[str, ...] = ()
    send_id: str | None = None
    machine: bool = False  # machine mail: never a reply, never sent to a model, never auto-answered
    extra: dict[str, str] = field(default_factory=dict)
    recipient: str | None = None  # complaint: the complaining address (Original-Rcpt-To, else the original's To)


def classify(message: EmailMessage, *, today: date | None = None) -> Classification:
    """Decide what ``message`` is by rules alone; ``today`` anchors return dates given without a year."""
    errors: list[str] = []
    rule_list: tuple[Callable[[Message, date | None], Classification | None], ...] = (
        _dsn, _daemon_bounce, _complaint, _auto_reply, _unsubscribe)
    for rule in rule_list:
        try:
            found = rule(message, today)
        except Exception as exc:  # noqa: BLE001 - one rule's trouble must not stop the others
            errors.append(f"{rule.__name__.strip('_')}:{type(exc).__name__}")
            continue
        if found is not None:
            return replace(found, extra={**found.extra, "errors": ";".join(errors)}) if errors else found
    try:
        return _reply(message, errors)
    except Exception as exc:  # noqa: BLE001
        return Classification("reply", "unparsed", extra={"errors": ";".join([*errors, type(exc).__name__])})


# -- 1. bounces -------------------------------------------------------------------------------------
_STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
_CODE_LINE = re.compile(r"(?<![\d.])([245]\d\d)[ \t-]+([245]\.\d{1,3}\.\d{1,3})(?!\.?\d)")
_BASIC_CODE = re.compile(r"(?<![\d.])([45][0-5]\d)(?=[ \t-]+[A-Za-z#<'\"(])")
_SMTPISH = re.compile(r"smtp|said|returned|response|rejected|error|reply|remote", re.IGNORECASE)
_SUCCESS_ACTIONS = {"delivered", "relayed", "expanded"}


def _dsn(message: Message, today: date | None) -> Classification | None:
    status_parts = _parts_of(message, "message/delivery-status", "message/global-delivery-status")
    if not status_parts and not _is_report(message, "delivery-status"):
        return None
    blocks = [block for part in status_parts for block in rules.field_blocks(part)]
    bounces: list[BounceInfo] = []
    delivered: list[str] = []
    for block in blocks:
        if not any(k in block for k in ("final-recipient", "original-recipient", "action", "status")):
            continue  # the per-message block (Reporting-MTA, Arrival-Date)
        action = (block.get("action", "").split() or [None])[0]
        action = action.lower() if action else None
        if action in _SUCCESS_ACTIONS:
            delivered.append(action)
            continue
        diagnostic = " ".join(block.get("diagnostic-code", "").split())[:200] or None
        status = _status(block.get("status", ""), diagnostic or "")
        final = _dsn_address(block.get("final-recipient", ""))
        original = _dsn_address(block.get("original-recipient", ""))
        bounces.append(BounceInfo(final or original, action, status, _severity(action, status), diagnostic,
                                  original_recipient=original))
    ids, send_id = _returned_original(message)
    if not bounces and delivered:  # a success notice (NOTIFY=SUCCESS): machine mail, nothing bounced
        return Classification("auto_reply", f"dsn:{delivered[0]}", original_message_ids=ids, send_id=send_id,
                               machine=True)
    reason = "dsn"
    if not bounces:  # a report whose status part is missing or unreadable: read its human text
        bounces, reason = _bounces_from_text(message, _notice_text(message), "failed"), "dsn:text"
    return Classification("bounce", reason, bounces=tuple(bounces), original_message_ids=ids, send_id=send_id,
                          machine=True)


_BOUNCE_SUBJECT = re.compile(
    r"undeliver|returned\s+(?:mail|to\s+sender)|delivery\s+(?:status\s+notification|failure|has\s+failed|failed"
    r"|problem|incomplete|delayed|notification|error)|mail\s+delivery\s+(?:failed|failure|system|subsystem)"
    r"|failure\s+notice|non\s+remis|unzustellbar|nicht\s+zustellbar|could\s+not\s+be\s+delivered"
    r"|message\s+not\s+delivered|delayed\s+mail",
    re.IGNORECASE,
)
_DELAY_SUBJECT = re.compile(r"\(delay\)|delayed|warning|still\s+being\s+retried|verzögert", re.IGNORECASE)


def _daemon_bounce(message: Message, today: date | None) -> Classification | None:
    """A bounce without ``report-type``: a daemon's notice whose text carries the SMTP code."""
    subject = header(message, "Subject")
    if not _BOUNCE_SUBJECT.search(subject) or not (_from_daemon(message) or _null_return_path(message)):
        return None
    action = "delayed" if _DELAY_SUBJECT.search(subject) else "failed"
    bounces = _bounces_from_text(message, _notice_text(message), action)
    ids, send_id = _returned_original(message)
    reason = "daemon-notice" if any(b.status for b in bounces) else "daemon-notice:no-code"
    return Classification("bounce", reason, bounces=tuple(bounces), original_message_ids=ids, send_id=send_id,
                          machine=True)


def _bounces_from_text(message: Message, text: str, action: str) -> list[BounceInfo]:
    """One BounceInfo per recipient that a line of the notice names next to an SMTP code."""
    ours = set(rules.addresses(" ".join(header(message, h) for h in ("From", "To", "Return-Path", "Reply-To"))))
    lines = text.splitlines()[:2000]
    candidates = [a for a in rules.text_addresses(text) if a not in ours]
    found: dict[str | None, BounceInfo] = {}
    for index, line in enumerate(lines):
        status, basic = _line_code(line)
        if status is None and basic is None:
            continue
        # The address on the code's line, else on the few lines above it (Exim), else the first one named.
        above = "\n".join(reversed(lines[max(index - 3, 0): index + 1]))
        nearby = [a for a in rules.text_addresses(above) if a not in ours]
        recipient = nearby[0] if nearby else (candidates[0] if candidates else None)
        if recipient in found:
            continue
        severity = _severity(action, status) if status else _basic_severity(basic, line)
        found[recipient] = BounceInfo(recipient, action, status, severity, " ".join(line.split())[:200] or None)
    if not found and candidates:  # a notice naming the address but no code: keep it, and retry later
        found[candidates[0]] = BounceInfo(candidates[0], action, None, "soft", None)
    return list(found.values())[:50]


def _line_code(line: str) -> tuple[str | None, str | None]:
    pair = _CODE_LINE.search(line)
    if pair and not pair.group(2).startswith("2"):
        return pair.group(2), pair.group(1)
    enhanced = _STATUS.search(line)
    if enhanced and enhanced.group(1) != "2":  # 2.x.x is success (or a version number), never a bounce
        return enhanced.group(0), None
    basic = _BASIC_CODE.search(line)
    if basic and _SMTPISH.search(line):
        return None, basic.group(1)
    return None, None


_POLICY_WORDS = re.compile(r"spam|block|blacklist|denylist|policy|reputation|dmarc|spf|dkim|rbl|spamhaus",
                           re.IGNORECASE)


def _basic_severity(code: str | None, line: str) -> Severity:
    if not code or code.startswith("4"):
        return "soft"
    return "policy" if _POLICY_WORDS.search(line) else "hard"


def _severity(action: str | None, status: str | None) -> Severity:
    if action == "delayed" or status is None or not status.startswith("5."):
        return "soft"  # delayed, temporary, or nothing says it is permanent
    return "policy" if status.startswith("5.7.") else "hard"


def _status(field_value: str, diagnostic: str) -> str | None:
    """The RFC 3463 code; a vague x.0.0 gives way to the diagnostic's more specific code of the same class."""
    found = _STATUS.search(field_value)
    specific = _STATUS.search(diagnostic)
    if found is None:
        return specific.group(0) if specific else None
    if specific and found.group(0).endswith(".0.0") and specific.group(1) == found.group(1):
        return specific.group(0)
    return found.group(0)


def _dsn_address(value: str) -> str | None:
    """``rfc822; User@Example.org`` → ``user@example.org``."""
    address = value.split(";", 1)[-1].strip().strip("<>").strip().lower()
    return address if "@" in address and " " not in address else None


# -- 2. complaints ----------------------------------------------------------------------------------
def _complaint(message: Message, today: date | None) -> Classification | None:
    report_parts = _parts_of(message, "message/feedback-report")
    if not report_parts and not _is_report(message, "feedback-report"):
        return None
    fields: dict[str, str] = {}
    for block in (b for part in report_parts for b in rules.field_blocks(part)):
        fields = {**block, **fields}
    ids, send_id = _returned_original(message)
    recipients = rules.addresses(fields.get("original-rcpt-to", "")) or _returned_recipients(message)
    feedback_type = (fields.get("feedback-type", "").split() or ["unknown"])[0].lower()
    extra = {k.replace("-", "_"): v[:200] for k, v in fields.items()
             if k in ("feedback-type", "user-agent", "original-mail-from", "source-ip", "arrival-date")}
    return Classification("complaint", f"arf:{feedback_type}", original_message_ids=ids, send_id=send_id,
                          machine=True, extra=extra, recipient=recipients[0] if recipients else None)


# -- 3. auto-replies --------------------------------------------------------------------------------
_AUTO_SUBJECT = re.compile(
    r"automatic\s+reply|auto[\s-]?reply|autoreply|auto[\s-]?response|out\s+of\s+(?:the\s+)?office"
    r"|abwesenheitsnotiz|automatische\s+antwort|r[ée]ponse\s+automatique|respuesta\s+autom[aá]tica"
    r"|^(?:absence|absent|abwesend|auto:|ooo|vacation|on\s+vacation|away)\b",
    re.IGNORECASE,
)
_OUT_OF_OFFICE = re.compile(
    r"out\s+of\s+(?:the\s+)?office|\booo\b|\baway\s+(?:from|until|till|on|for)\b|\b(?:am|i'm|be|currently)\s+away\b"
    r"|\bon\s+(?:annual\s+|parental\s+|maternity\s+|paternity\s+|sick\s+|medical\s+)?leave\b|\bvacation\b"
    r"|\bon\s+holidays?\b|\bholidays?\s+(?:until|till|from)\b|abwesen|urlaub|nicht\s+im\s+büro|au(?:ß|ss)er\s+haus"
    r"|\babsen(?:t|ce)\b|\bcongés?\b"
    r"|en\s+vacances|not\s+in\s+the\s+office|limited\s+access\s+to\s+(?:my\s+)?e-?mail",
    re.IGNORECASE,
)
_PRECEDENCE = {"bulk", "junk", "list", "auto_reply"}
_NOREPLY = re.compile(r"^(?:no[-_.]?reply|do[-_.]?not[-_.]?reply|noreply[-_.+].*)$", re.IGNORECASE)


def _auto_reply(message: Message, today: date | None) -> Classification | None:
    subject = header(message, "Subject")
    reason = _machine_signal(message)
    if reason is None:
        matched = _AUTO_SUBJECT.search(rules.strip_subject_prefixes(subject))
        if matched is None:
            return None
        reason = f"subject:{' '.join(matched.group(0).lower().split())}"
    ids = _thread_ids(message)
    text = rules.unquoted_top(rules.body_text(message))[:20_000]
    if not (_OUT_OF_OFFICE.search(subject) or _OUT_OF_OFFICE.search(text)):
        return Classification("auto_reply", reason, original_message_ids=ids, machine=True)
    anchor = today or rules.message_date(message) or datetime.now(timezone.utc).date()
    back = rules.return_date(f"{subject}\n{text}", anchor)
    extra = {"return_date_basis": back[1]} if back else {}
    return Classification("out_of_office", reason, return_date=back[0] if back else None, original_message_ids=ids,
                          machine=True, extra=extra)


def _machine_signal(message: Message) -> str | None:
    """Why the headers say a machine sent this (RFC 3834 and common practice), or ``None``."""
    submitted = header(message, "Auto-Submitted").split(";")[0].strip().lower()
    if submitted and submitted != "no":
        return f"auto-submitted:{submitted[:40]}"
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder"):
        if header(message, name):
            return name.lower()
    precedence = header(message, "Precedence").lower()
    if precedence in _PRECEDENCE:
        return f"precedence:{precedence}"
    if _null_return_path(message):
        return "return-path:<>"
    if _from_daemon(message):
        return "sender:mailer-daemon"
    senders = rules.addresses(header(message, "From"))
    if senders and _NOREPLY.match(senders[0].split("@")[0]):
        return "sender:noreply"
    return None


# -- 4. unsubscribe requests, 5. replies -------------------------------------------------------------
def _unsubscribe(message: Message, today: date | None) -> Classification | None:
    subject = rules.strip_subject_prefixes(header(message, "Subject"))
    phrase = rules.opt_out_phrase(subject, max_words=3)
    where = "subject"
    if phrase is None:
        top = [line.strip() for line in rules.unquoted_top(rules.body_text(message)).splitlines() if line.strip()]
        phrase, where = rules.opt_out_phrase(" ".join(top[:15])[:1500], max_words=6), "body"
    if phrase is None:
        return None
    return Classification("unsubscribe", f"{where}:{phrase}", original_message_ids=_thread_ids(message))


_STRUCTURAL_DEFECTS = {"StartBoundaryNotFoundDefect", "CloseBoundaryNotFoundDefect", "NoBoundaryInMultipartDefect",
                       "MultipartInvariantViolationDefect", "MissingHeaderBodySeparatorDefect"}


def _reply(message: Message, errors: list[str]) -> Classification:
    in_reply_to = rules.message_ids(header(message, "In-Reply-To"))
    ids = _thread_ids(message)
    defects = sorted({type(d).__name__ for d in getattr(message, "defects", [])})
    extra = {"errors": ";".join(errors)} if errors else {}
    if defects:
        extra["defects"] = ",".join(defects)[:200]
    if errors or not message.keys() or _STRUCTURAL_DEFECTS.intersection(defects):
        reason = "unparsed"
    else:
        reason = "in-reply-to" if in_reply_to else "references" if ids else "no-rule"
    return Classification("reply", reason, original_message_ids=ids, extra=extra)


# -- helpers ----------------------------------------------------------------------------------------
def _thread_ids(message: Message) -> tuple[str, ...]:
    return rules.message_ids(header(message, "In-Reply-To"), header(message, "References"))


def _is_report(message: Message, report_type: str) -> bool:
    if message.get_content_type() != "multipart/report":
        return False
    return str(message.get_param("report-type", "") or "").strip().lower() == report_type


def _parts_of(message: Message, *types: str) -> list[Message]:
    return [part for part in rules.iter_parts(message) if part.get_content_type() in types]


def _returned_original(message: Message) -> tuple[tuple[str, ...], str | None]:
    """Message-IDs and the X-Send-Id of the original a report or notice hands back."""
    ids: list[str] = []
    send_id: str | None = None
    for original in _returned_messages(message):
        ids.extend(i for i in rules.message_ids(header(original, "Message-ID")) if i not in ids)
        send_id = send_id or header(original, "X-Send-Id") or None
    if not ids or send_id is None:  # a notice that pastes the original's headers into its text
        text = _all_text(message)
        ids.extend(i for i in rules.message_ids(*re.findall(r"(?im)^[ \t]*message-id:[ \t]*(\S+)", text))
                   if i not in ids)
        pasted = re.search(r"(?im)^[ \t]*x-send-id:[ \t]*(\S+)", text)
        send_id = send_id or (pasted.group(1) if pasted else None)
    return tuple(ids[: rules.MAX_IDS]), send_id


def _returned_recipients(message: Message) -> list[str]:
    return [a for m in _returned_messages(message) for a in rules.addresses(header(m, "To"))]


def _returned_messages(message: Message) -> list[Message]:
    found: list[Message] = []
    for part in rules.iter_parts(message):
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            found.extend(p for p in (payload if isinstance(payload, list) else []) if isinstance(p, Message))
        elif ctype in ("text/rfc822-headers", "message/rfc822-headers"):
            found.append(HeaderParser(policy=default_policy).parsestr(rules.leaf_text(part)))
    return found[:10]


_COPY_MARKER = re.compile(
    r"^[ \t]*(?:-{2,}[ \t]*(?:this\s+is\s+a\s+copy|original\s+message|below\s+this\s+line|the\s+header\s+of\s+the"
    r"\s+original|original\s+message\s+headers|forwarded\s+message)|original\s+message\s+headers:|received:\s+from\b)",
    re.IGNORECASE | re.MULTILINE,
)


def _notice_text(message: Message) -> str:
    """The notice's own words: its text parts, cut where a pasted copy of the original begins."""
    text = _all_text(message)
    cut = _COPY_MARKER.search(text)
    return text[: cut.start()] if cut else text


def _all_text(message: Message) -> str:
    texts = []
    for part in rules.iter_parts(message):
        ctype = part.get_content_type()
        if ctype == "text/plain" or ctype.startswith("multipart/"):
            texts.append(rules.part_text(part))
    if not any(t.strip() for t in texts):
        texts = [rules.html_to_text(rules.part_text(p)) for p in rules.iter_parts(message)
                 if p.get_content_type() == "text/html"]
    return "\n".join(texts)[: rules.MAX_TEXT]


def _from_daemon(message: Message) -> bool:
    return any(a.split("@")[0] in rules.DAEMONS for a in rules.addresses(header(message, "From")))


def _null_return_path(message: Message) -> bool:
    value = header(message, "Return-Path")
    return bool(value) and value.replace(" ", "") in ("<>", "<<>>")
