"""The small error hierarchy. `UsageError` and its children are bad input: the CLI prints their
message as one line and exits 2. Anything else escaping is a bug in oomladder."""


class OomLadderError(Exception):
    """Base of every error oomladder raises on purpose."""


class UsageError(OomLadderError):
    """Bad input from the person running oomladder (flag, size, file, command)."""


class LadderFileError(UsageError):
    """A ladder YAML file that is missing, malformed, or names what does not exist."""


class StrategyError(UsageError):
    """An unknown strategy name or parameters a strategy does not accept."""


class RunDirError(UsageError):
    """A directory that is not an oomladder run, or one that cannot be used for this command."""
