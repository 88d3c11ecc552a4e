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
NOT_READY = 9          # wait-ready: the cluster was not whole within the timeout
PROCESS_EXITED = 10    # wait-ready: a watched task ended before the cluster was ready
NO_INTERFACE = 11      # interface: no interface for Dask could be chosen on this node
NOT_READABLE = 12      # join-check, retire: a file of the cluster this user may not read (another user's)
CLUSTER_GONE = 13      # join-check, retire: the cluster's job has ended (nothing answers at its address)
NO_TLS_FILES = 14      # join-check, retire: a TLS cluster whose client configuration or certificates are missing
RETIRE_TIMEOUT = 15    # retire: the workers were still on the scheduler after --timeout
NOT_RETIRED = 16       # retire: some workers kept data no other worker could take (they still run)
