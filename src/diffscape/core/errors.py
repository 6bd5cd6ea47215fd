"""Exceptions for problems the user can fix; the CLI prints them as one line (exit 2)."""


class DiffscapeError(Exception):
    """Base for errors whose message says what to do."""
