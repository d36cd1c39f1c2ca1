"""The one exception type that the CLI turns into a one-line message and a non-zero exit."""


class MetarunError(Exception):
    """A bad config, data set or run folder, explained in one sentence for the user."""
