"""The errors a person can fix, and the command line's exit codes.

Every error a user can act on derives from ``ConceptpruneError``: its message names what is
wrong, where, and the fix, and the command line prints it as one line. An ``OSError`` (a
missing file, a full disk, a permission) is the machine's answer about the user's files and
is printed the same way. Anything else is a bug in conceptprune: the command line prints its
traceback, says that it is a bug, and exits with ``EXIT_BUG``.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1  # a user or input error: the message says what to change
EXIT_CONFIG = 2  # the configuration or the command line cannot be read
EXIT_BUG = 70  # an internal error (EX_SOFTWARE): report it with its traceback


class ConceptpruneError(Exception):
    """An error the user can fix; the message says what is wrong, where, and the fix."""


class RunError(ConceptpruneError, ValueError):
    """A run cannot go on with these inputs or folders."""


BUG_MESSAGE = ("internal error: this is a bug in conceptprune, not in your data or settings; "
               "please report it with the traceback above")
