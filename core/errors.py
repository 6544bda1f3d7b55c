"""The one error a user can fix."""


class PipelineError(Exception):
    """Bad input or state the user can fix; the message names the file and the fix."""
