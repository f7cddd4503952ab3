"""The one error type the command line turns into a one-line message and a non-zero exit."""


class ToolError(Exception):
    """A failure a person can act on: the message names the problem and the fix."""
