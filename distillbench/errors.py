"""The one exception type the CLI turns into a single stderr line and exit code 2."""


class UserError(Exception):
    """Bad input from the user: unknown names, missing files, malformed data, impossible settings.

    Raised anywhere below the CLI; the CLI prints ``error: <message>`` and exits with code 2, so users
    never see a traceback for something they can fix themselves.
    """
