"""The one error type that reaches users: bad input, reported as one line and exit code 2."""


class InputError(Exception):
    """Bad user input (config, trace, profile, model). The message is one line that names
    the file and the key or row at fault; the CLI prints it and exits with code 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message.replace("\n", " "))
