"""The one exception type for bad user input."""


class GraftError(Exception):
    """A problem with the user's input or files, explained in one line.

    The CLI prints the message as ``graft: error: <message>`` and exits with code 2,
    with no traceback. Library users can catch it to tell their mistakes from bugs.
    """
