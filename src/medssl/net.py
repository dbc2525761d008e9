"""One quick HTTP health request (the MLflow server, the KFP API) before a client library that
retries for minutes and then prints a traceback."""

from __future__ import annotations

import urllib.error
import urllib.request

from medssl.errors import one_line


class Unreachable(Exception):
    """No HTTP answer; the message is the reason (connection refused, timeout, bad URL)."""


def health_status(url: str, *, token: str | None = None, timeout: float = 5.0) -> int:
    """The HTTP status of GET `url` (with a bearer token when given); Unreachable when no
    server answered."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read(64)
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise Unreachable(one_line(getattr(exc, "reason", exc))) from None
