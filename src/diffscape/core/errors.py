"""Exceptions for problems the user can fix; the CLI prints them as one line (exit 2)."""


class DiffscapeError(Exception):
    """Base for errors whose message says what to do."""


class TrainingInterrupted(DiffscapeError):
    """SIGINT/SIGTERM: the run saved a checkpoint and stopped; the message says how to resume."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum

    def __reduce__(self) -> tuple:  # from a training process (train.processes) to its caller
        return type(self), (str(self), self.signum)
