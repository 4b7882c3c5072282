"""Errors that carry a message meant for the user (CLI exit code 2, an error box in the app)."""


class CfxError(Exception):
    """Base class: the message is one readable line."""


class DataError(CfxError):
    """A data root, category or image that cannot be used."""


class ModelMissingError(CfxError):
    """No trained model for a dataset/category."""
