"""The one error type of model loading and saving: its message says what is wrong and how to fix it."""


class ModelLoadError(Exception):
    """A model could not be loaded or saved; the message names the file/key and the fix."""
