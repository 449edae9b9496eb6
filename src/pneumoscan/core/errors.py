"""Errors that tell the user which file, what is wrong and what to do.

The CLI turns every `PneumoscanError` into a one-line message without a traceback; the server maps
the input errors to HTTP codes (`UnsupportedFormatError` 415, `ImageTooLargeError` 413, any other
`InputError` 400).
"""


class PneumoscanError(Exception):
    """Base class: anything the user can fix."""


class InputError(PneumoscanError):
    """An image file that cannot be read as a radiograph (unreadable, corrupt, wrong content)."""


class UnsupportedFormatError(InputError):
    """Not a JPEG, PNG or DICOM file at all."""


class ImageTooLargeError(InputError):
    """Too many pixels (or bytes) to decode safely; refused before decoding."""


class DatasetError(PneumoscanError):
    """A data folder that does not have the expected layout or content."""


class ConfigError(PneumoscanError):
    """A config file or override that is not valid."""


class ModelFileError(PneumoscanError):
    """A model file that is missing, corrupt or of an unknown format."""


class WeightsNotFoundError(PneumoscanError):
    """Pretrained weights that are not available offline."""


class NotChestRadiographError(InputError):
    """A readable file whose header says it is no frontal chest radiograph (a CT slice, a lateral
    view...); the runtime reports it as `not_chest_xray` with this `reason`, never as an error."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
