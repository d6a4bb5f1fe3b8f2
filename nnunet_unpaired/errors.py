"""The one exception type for problems the user can fix (bad input, missing setup)."""


class UserError(Exception):
    """A problem with the user's input or setup. The message names the file or dataset and says how to fix it.

    The command line prints the message without a traceback and exits with status 2.
    """
