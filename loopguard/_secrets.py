"""Connection URLs and DSNs rendered without their secrets.

loopguard renders the ``url`` of every message, warning and record (the exception and its
``record``, the warnings, structlog, the JSON-lines file, the pytest summary) this way, for
SQLAlchemy engines and asyncpg pools alike.  Passwords given outside the URL
(``connect_args``, asyncpg's ``password=``) are never rendered at all.

Masked (shown as ``***``):

- the password in a URL's userinfo (``user:PASSWORD@host``);
- a query parameter (or libpq ``key=value`` parameter) whose name, percent-decoded and in any
  case, names a secret: ``password`` and ``sslpassword`` (libpq, asyncpg), and any name
  containing ``password``, ``passwd``, ``pwd``, ``secret``, ``token``, ``passphrase``,
  ``credential``, ``apikey``/``api_key`` or ``private_key`` (other drivers' spellings: ODBC's
  ``PWD``, cloud drivers' tokens and keys);
- a parameter whose value carries a secret of its own: a ``name=value`` list naming one
  (``odbc_connect=...;PWD=...``, ``options=-c ...password=...``) or a URL with a password.

Not masked: ``passfile``, ``sslkey``, ``sslcert``, ``sslrootcert`` and ``sslcrl`` are paths to
files that hold secrets, not secrets; which file a connection uses is worth seeing.

A DSN that cannot be split unambiguously is not shown at all; in its place:
``<DSN not shown: it could not be parsed, and may hold a password>``.  That is a DSN with a
``#``, with an ``@`` in its path, or with an ``@`` in its query and none before its host: the
signs of an unencoded ``#``, ``/``, ``?`` or ``@`` in a password, which would otherwise spill
part of it into the host, path or query.
"""

from __future__ import annotations

import re
from typing import Any, Optional
from urllib.parse import unquote_plus, urlsplit

MASK = "***"
UNSHOWN = "<DSN not shown: it could not be parsed, and may hold a password>"

# Patterns, compiled (and cached by ``re``) on first use: nothing to pay at install time.
_SECRET_NAME = r"password|passwd|pwd|secret|token|passphrase|credential|api_?key|private_?key"
# Inside a value: a name=value pair naming a secret, or a URL with a password.
_SECRET_IN_VALUE = rf"(?:{_SECRET_NAME})[\w.-]*\s*=|://[^/@\s]*:[^@]*@"
_URL = r"[A-Za-z][A-Za-z0-9+.-]*://"
# One libpq key=value parameter: a bare value, or a single-quoted one with \\ escapes.
_CONNINFO_PARAM = r"\s*([\w.-]+)\s*=\s*('(?:[^'\\]|\\.)*'|(?:[^\s'\\]|\\.)+)\s*"
# A placeholder that SQLAlchemy's URL rendering leaves as it is (no character to quote).
_SENTINEL = "loopguard-masked-value-5f0c"


def is_secret(name: str, value: str = "") -> bool:
    """True when the parameter ``name=value`` (both decoded) must not be shown."""
    return bool(re.search(_SECRET_NAME, name, re.I) or re.search(_SECRET_IN_VALUE, value, re.I))


def mask_dsn(dsn: str) -> str:
    """A URL (``scheme://...``) or a libpq ``key=value`` DSN, with every secret masked."""
    try:
        if re.match(_URL, dsn):
            return _mask_url(dsn)
        return _mask_conninfo(dsn)
    except Exception:  # whatever it is, it is not shown: never a crash, never a leak
        return UNSHOWN


def mask_sqlalchemy_url(url: Any) -> str:
    """A SQLAlchemy ``URL``: its own rendering with the password hidden, and the secret query
    parameters replaced before rendering (``hide_password`` hides only the userinfo's)."""
    try:
        query = {
            name: _SENTINEL if is_secret(name, _joined(value)) else value
            for name, value in url.query.items()
        }
        rendered = url.set(query=query).render_as_string(hide_password=True)
    except Exception:
        return UNSHOWN
    return str(rendered).replace(_SENTINEL, MASK)


def _joined(value: Any) -> str:
    # A query parameter given several times has a tuple of values.
    return value if isinstance(value, str) else "&".join(map(str, value))


def _mask_url(dsn: str) -> str:
    parts = urlsplit(dsn)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if "#" in dsn or "@" in parts.path or (not at and "@" in parts.query):
        return UNSHOWN
    if at:
        user, colon, _ = userinfo.partition(":")
        userinfo = user + (":" + MASK if colon else "") + "@"
    query = _mask_query(parts.query)
    if query is None:
        return UNSHOWN
    return f"{parts.scheme}://{userinfo}{hosts}{parts.path}" + (f"?{query}" if query else "")


def _mask_query(query: str) -> Optional[str]:
    """The query with secret values masked; separators and the other items exactly as given.

    Split at ``&`` and also at ``;`` (older Pythons' ``parse_qs`` split at both).
    """
    pieces = re.split(r"([&;])", query)
    for index in range(0, len(pieces), 2):  # the odd indexes are the separators
        name, equals, value = pieces[index].partition("=")
        if not equals:
            if "@" in name:  # a stray piece of userinfo, cut off by a '?' in the password
                return None
            continue
        if is_secret(unquote_plus(name), unquote_plus(value)):
            pieces[index] = f"{name}={MASK}"
    return "".join(pieces)


def _mask_conninfo(dsn: str) -> str:
    """libpq's ``host=... password=...`` form; anything else is not shown."""
    param = re.compile(_CONNINFO_PARAM, re.S)
    params = []
    position = 0
    while position < len(dsn):
        match = param.match(dsn, position)
        if match is None:
            return UNSHOWN
        name, value = match.groups()
        if is_secret(name, value):
            value = MASK
        params.append(f"{name}={value}")
        position = match.end()
    return " ".join(params) if params else UNSHOWN
