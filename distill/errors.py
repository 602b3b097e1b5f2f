"""The one error type a user can cause; the CLI prints it as a single line."""


class DistillError(Exception):
    """A problem with the user's input (path, config value, data), not a bug."""
