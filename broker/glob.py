"""Subject globs, one meaning everywhere: policy rules, and operators' `subject_glob` selectors.

`*` and `?` stay inside one `:`/`/` segment, `**` spans anything; a pattern matches a whole subject
(anchored). A subject given as `subject` is always literal, whatever characters it holds.
"""

from __future__ import annotations

import re
from functools import lru_cache

_GLOB_TOKENS = re.compile(r"(\*\*|\*|\?)")
_GLOB_REGEX = {"**": ".*", "*": "[^:/]*", "?": "[^:/]"}
_MAX_GLOB = 512


def glob_problem(pattern: str) -> str | None:
    """Why a glob is refused, or None if it is fine."""
    if not pattern:
        return "empty pattern"
    if len(pattern) > _MAX_GLOB:
        return f"pattern longer than {_MAX_GLOB} characters"
    if "***" in pattern:
        return "'***' is ambiguous; use '*' (within one segment) or '**' (anything)"
    if not pattern.isprintable():
        return "pattern contains control characters"
    return None


@lru_cache(maxsize=4096)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """Regex for a glob, used with fullmatch: `*`/`?` stay inside one `:`/`/` segment, `**` spans all."""
    regex = "".join(_GLOB_REGEX.get(token, re.escape(token)) for token in _GLOB_TOKENS.split(pattern))
    return re.compile(regex, re.DOTALL)
