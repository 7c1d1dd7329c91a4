"""The exception types the CLI turns into a single ``error: …`` stderr line instead of a traceback."""


class UserError(Exception):
    """Bad input from the user: unknown names, missing files, malformed data, impossible settings.

    Raised anywhere below the CLI; the CLI prints ``error: <message>`` and exits with code 2, so users
    never see a traceback for something they can fix themselves.
    """


class HeldElsewhere(UserError):
    """Another process holds the run's lock: it is running there (a sweep counts it as running elsewhere,
    not as failed)."""


class RunFailed(Exception):
    """A valid run that could not finish (e.g. its loss diverged): exit code 1, no record written."""


class NonFiniteLoss(RunFailed):
    """A loss term became NaN or infinite; training stops at that step."""


def one_line(error: BaseException) -> str:
    """An exception as one line, its type first: what a sweep's summary and a failed cell's claim show."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
