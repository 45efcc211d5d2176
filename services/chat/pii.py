"""Mask phone numbers and e-mail addresses before anything reaches the logs."""

from __future__ import annotations

import logging
import re

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_PHONE = re.compile(
    r"(?<!\d)(?:\+?82[-.\s]?)?0?1[016789][-.\s]?\d{3,4}[-.\s]?\d{4}(?!\d)|(?<!\d)0\d{1,2}[-.\s]\d{3,4}[-.\s]\d{4}(?!\d)"
)


def mask(text: str) -> str:
    return _PHONE.sub("[전화번호]", _EMAIL.sub("[이메일]", text))


class PiiFilter(logging.Filter):
    """Installed on the process's log handlers by the chat app: masks msg, args and string extras."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask(record.getMessage()) if isinstance(record.msg, str) or record.args else record.msg
        record.args = ()
        for key, value in list(record.__dict__.items()):
            if isinstance(value, str) and key not in (
                "msg",
                "name",
                "levelname",
                "pathname",
                "filename",
                "module",
                "funcName",
                "processName",
                "threadName",
                "taskName",
            ):
                setattr(record, key, mask(value))
        return True


def install() -> PiiFilter:
    f = PiiFilter()
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(x, PiiFilter) for x in handler.filters):
            handler.addFilter(f)
    root.addFilter(f)
    logging.getLogger("eco2.chat").addFilter(f)
    return f
