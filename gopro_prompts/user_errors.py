"""The error type for bad user input.

``train.py`` turns a :class:`UserError` (and a missing file) into one line on
stderr and a non-zero exit, without a traceback: the message itself must name
the problem and the fix.
"""


class UserError(Exception):
    """Bad input from the user (config, flags, data layout)."""


def did_you_mean(name, choices, n=1):
    """`` (did you mean X?)`` for the closest of ``choices`` ignoring case, or an empty string.

    A choice equal to ``name`` but for case (``coop`` -> ``CoOp``) always comes first.
    """
    import difflib

    name = str(name)
    by_lower = {}
    for choice in map(str, choices):
        by_lower.setdefault(choice.lower(), choice)
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=n, cutoff=0.5)
    if name.lower() in by_lower:
        close = [name.lower()] + [c for c in close if c != name.lower()][:n - 1]
    close = [by_lower[c] for c in close if by_lower[c] != name]
    return f" (did you mean {', '.join(close)}?)" if close else ""
