"""The one exception type that the CLI turns into a one-line error and a non-zero exit."""


class BlockMAEError(Exception):
    """Bad user input (config, dataset, checkpoint, mask geometry). The message is shown as is."""


class ReportedError(BlockMAEError):
    """An error already printed where it arose (e.g. rank 0's error, printed by another rank before torchrun
    stops it); the CLI exits non-zero without printing it again."""


def error_line(message: object) -> str:
    """The one-line form of every error the CLI prints."""
    return f"blockmae: error: {message}"
