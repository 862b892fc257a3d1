"""The one error type the CLI turns into a clean one-line message and a non-zero exit."""


class MixlabError(Exception):
    """A user-facing error: bad input, missing file, wrong field. The message names what and where."""
