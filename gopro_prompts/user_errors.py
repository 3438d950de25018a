"""The error type for bad user input.

``train.py`` turns a :class:`UserError` (and a missing file) into one line on
stderr and a non-zero exit, without a traceback: the message itself must name
the problem and the fix.
"""


class UserError(Exception):
    """Bad input from the user (config, flags, data layout)."""


def did_you_mean(name, choices, n=1):
    """`` (did you mean X?)`` for the closest of ``choices``, or an empty string."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=n, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""
