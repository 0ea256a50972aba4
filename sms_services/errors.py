"""The one exception type an admin ever sees.

Every problem caused by input (a file, a field, a release name, the host) is
raised as :class:`UserError` with a message that names the object and says what
to do. The CLI prints it as one line and exits non-zero; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the admin can fix; ``str(err)`` is the whole message."""

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def where(path: object, field: str | None = None) -> str:
    """Format ``file: field`` the same way in every message."""
    return f"{path}: {field}" if field else f"{path}"
