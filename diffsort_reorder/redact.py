"""Passwords never leave memory: every URL the suite writes (``report.md``, ``study.yaml``) or
prints (log lines, error messages, ``--cfg``) goes through :func:`redacted`, which replaces the
password of each ``scheme://user:password@host`` (or ``?password=``) in a text with ``***``, as
SQLAlchemy's ``render_as_string(hide_password=True)`` does. The real URL stays in the config in
memory, for connecting."""

from __future__ import annotations

import re

HIDDEN = "***"
# scheme://user:password@ : a user without ':', '/' or '@'; the password runs to the last '@'
# of the URL (an unescaped '@' in a password hides too much rather than too little).
_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"]*):[^\s'\"]*@")
_QUERY = re.compile(r"(?P<head>[?&]password=)[^&\s'\"]*")  # ...?password=... (libpq's too)


def redacted(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    text = _CREDENTIALS.sub(lambda m: f"{m['head']}:{HIDDEN}@", str(text))
    return _QUERY.sub(lambda m: f"{m['head']}{HIDDEN}", text)
