"""HTTP errors of the DICOMweb services (PS3.18 8.5, 10.x.3 status codes), each with a message in words.

Messages say what was wrong with the request and never quote patient data (UIDs of the request may
appear: they are the caller's own words and are not logged).
"""

from __future__ import annotations


class HttpError(Exception):
    status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(HttpError):
    status = 400


class NotFound(HttpError):
    status = 404


class NotAcceptable(HttpError):
    """No representation the Accept header allows can be given (PS3.18 8.7.5)."""

    status = 406


class PayloadTooLarge(HttpError):
    status = 413


class UnsupportedMediaType(HttpError):
    status = 415
