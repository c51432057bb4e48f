"""How a stage says "this job cannot be done": ``JobFailed`` with an error code."""

from __future__ import annotations

from typing import NoReturn

from pipeline.jobs.contract import ErrorCode


class JobFailed(Exception):
    """Ends a job FAILED with ``code``: permanent for this manifest, never retried."""

    def __init__(self, code: ErrorCode | str, message: str) -> None:
        super().__init__(message)
        self.code = str(code)
        self.message = message


def fail(code: ErrorCode | str, message: str) -> NoReturn:
    raise JobFailed(code, message)
