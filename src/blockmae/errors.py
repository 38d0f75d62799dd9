"""The one exception type that the CLI turns into a one-line error and a non-zero exit."""


class BlockMAEError(Exception):
    """Bad user input (config, dataset, checkpoint, mask geometry). The message is shown as is."""
