"""The helpers' one error class: a message for the user and an exit status."""


class KitError(Exception):
    """A problem the user can fix; str() says what is wrong and what to do."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# Exit statuses, distinct so that scripts can tell the cases apart.
USAGE = 2
MISSING = 3
MALFORMED = 4
NOT_SCHEDULER = 5
NO_DASHBOARD = 6
BAD_VALUE = 7
NO_TLS_TOOL = 8
