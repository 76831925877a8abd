"""Removing credentials from camera URLs before they reach a log, an alert or a metric."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit, urlunsplit

_CREDENTIALS_IN_TEXT = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s]*@")
# Query parameters that cameras and streaming servers use for secrets.
SECRET_QUERY_KEYS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "pass",
        "token",
        "access_token",
        "auth",
        "key",
        "api_key",
        "apikey",
        "secret",
    }
)
_SECRET_QUERY_IN_TEXT = re.compile(
    r"(?P<key>\b(?:" + "|".join(sorted(SECRET_QUERY_KEYS, key=len, reverse=True)) + r")=)[^&\s'\"]*",
    re.IGNORECASE,
)


def redact_url(url: str) -> str:
    """Return ``url`` with any user name, password and secret query value replaced by ``***``.

    The last ``@`` before the path ends the credentials, so passwords that contain
    ``@`` or ``:`` are removed whole.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = _SECRET_QUERY_IN_TEXT.sub(r"\g<key>***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove ``user:password@`` parts of URLs, secret query values and each given secret from free text."""
    text = _CREDENTIALS_IN_TEXT.sub(r"\g<scheme>***@", text)
    text = _SECRET_QUERY_IN_TEXT.sub(r"\g<key>***", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def url_secrets(url: str) -> tuple[str, ...]:
    """Return the user name, password and secret query values of ``url``, to remove from error text."""
    try:
        parts = urlsplit(url)
        found = [parts.password, parts.username]
    except ValueError:
        return ()
    found += [value for key, value in parse_qsl(parts.query) if key.lower() in SECRET_QUERY_KEYS]
    return tuple(secret for secret in found if secret)
