"""DataError: bad or missing data files; a UserError (safeio), so every command line prints its
one-line message as `error: ...`."""
from safeio import UserError


class DataError(UserError):
    """A data set cannot be read or generated (missing, corrupt or inconsistent files, bad arguments)."""
