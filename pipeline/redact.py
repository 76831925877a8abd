"""Removing credentials from camera URLs before they reach a log, an alert or a metric."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_CREDENTIALS_IN_TEXT = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s]*@")


def redact_url(url: str) -> str:
    """Return ``url`` with any user name and password replaced by ``***``.

    The last ``@`` before the path ends the credentials, so passwords that contain
    ``@`` or ``:`` are removed whole.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


def redact_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove ``user:password@`` parts of URLs and each given secret from free text."""
    text = _CREDENTIALS_IN_TEXT.sub(r"\g<scheme>***@", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
