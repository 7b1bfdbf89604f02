"""What ``POST /predict`` takes and answers, for the OpenAPI document (``GET /openapi.json``).

The route reads its multipart body itself (to apply the upload limits before FastAPI would), so
FastAPI cannot infer the body: it is declared here, for schema-driven clients and fuzzers.
"""

from __future__ import annotations

from pydantic import BaseModel

# The multipart field every image goes in (repeat it for several images).
FIELD = "file"


class Label(BaseModel):
    """One class and its probability."""

    label: str
    prob: float


class Prediction(BaseModel):
    """The answer for one uploaded image.

    ``labels`` is the model's answer: the top class (or the one its binary threshold picks), or
    for a multi-label model every class at or above its threshold, most probable first, possibly
    none. ``label`` and ``prob`` are its first entry (``""`` and 0.0 when it is empty). ``top``
    is the ``top_k`` classes: the answered one first, then by probability (multi-label: by
    probability, whatever the thresholds). Probabilities are calibrated (the run's temperature).

    ``score`` is the image's unknown score (the cosine distance of its features to the nearest
    training image's; null for a run that stores none). When it is past the rejection threshold,
    ``unknown`` is true and ``label`` is the unknown label (``prob``, ``labels`` and ``top`` still
    say what the classes alone would answer).
    """

    filename: str
    label: str
    prob: float
    labels: list[Label]
    top: list[Label]
    unknown: bool = False
    score: float | None = None


class Predictions(BaseModel):
    """The answer to ``POST /predict``: one prediction per image, in upload order."""

    predictions: list[Prediction]


class ErrorBody(BaseModel):
    """Every 4xx answer: one line saying what was wrong."""

    error: str


REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FIELD],
                    "properties": {
                        FIELD: {
                            "type": "array",
                            "minItems": 1,
                            "items": {"type": "string", "format": "binary"},
                            "description": "the images (JPEG, PNG, WebP, BMP, GIF or TIFF)",
                        }
                    },
                },
                "encoding": {FIELD: {"contentType": "image/*"}},
            }
        },
    }
}

RESPONSES: dict[int | str, dict] = {
    400: {"model": ErrorBody, "description": "no image in the field 'file', an empty file, a bad body"},
    413: {"model": ErrorBody, "description": "body over the size limit, or an image with too many pixels"},
    415: {"model": ErrorBody, "description": "not multipart, or a file that is not an image graft takes"},
    422: {"model": ErrorBody, "description": "an image that does not decode, or a bad top_k"},
}
