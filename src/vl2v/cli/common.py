"""What every command module shares: the user-error class and ``key=value`` parsing."""

from __future__ import annotations

from vl2v.errors import UserError


class CLIError(UserError):
    """A bad command line: printed without a traceback, exit status 2."""


def parse_kv(items: list[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for it in items or []:
        if "=" not in it:
            raise CLIError(f"bad {what} {it!r}: expected key=value")
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip()
    return out
