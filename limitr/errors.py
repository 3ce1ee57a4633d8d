"""Errors a user can act on.

Library code raises :class:`LimitrError` for a fatal input problem (a wrong root, a missing
metadata file, an unreadable archive). The stage commands turn it into one clear line on
stderr and a non-zero exit, without a traceback.
"""


class LimitrError(Exception):
    """A fatal, user-fixable problem; the message says what to fix."""
