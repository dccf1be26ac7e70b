"""DataError: bad or missing data files; the message is one line the CLI prints as `error: ...`."""


class DataError(Exception):
    """A data set cannot be read or generated (missing, corrupt or inconsistent files, bad arguments)."""
