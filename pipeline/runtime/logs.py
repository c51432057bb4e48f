"""Logging set-up: every line logged while a job runs carries its ``job_id`` (text or JSON)."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime

job_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("job_id", default="-")


class _JobIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.job_id = job_id_var.get()
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "job_id": getattr(record, "job_id", "-"),
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    """One event, one line: control characters in a message (a key, a voice name or a job's text
    from a client) are escaped, so nothing a client sends can forge a log line. Tracebacks keep
    their lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


def escape_controls(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def setup(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_JobIdFilter())
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s [%(job_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party chatter that would drown the job lines.
    for noisy in ("botocore", "aiobotocore", "boto3", "s3transfer", "urllib3", "httpx", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
