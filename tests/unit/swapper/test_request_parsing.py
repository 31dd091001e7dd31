"""Where the swapper finds the model: JSON bodies and multipart forms (audio)."""

from __future__ import annotations

import pytest

from swapper.errors import ApiError
from swapper.http_app import model_from_body


def test_model_from_a_json_body() -> None:
    assert model_from_body(b'{"model": "m", "x": 1}', "application/json") == ("m", {"model": "m", "x": 1})


def test_model_from_a_multipart_form() -> None:
    body = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF\r\n'
            b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n--b--\r\n')
    assert model_from_body(body, "multipart/form-data; boundary=b") == ("whisper", None)


@pytest.mark.parametrize(("body", "content_type", "message"), [
    (b"{not json", "application/json", "not valid JSON"),
    (b"[1]", "application/json", "must be a JSON object"),
    (b'{"messages": []}', "application/json", "has no 'model'"),
    (b"--b\r\n\r\n--b--", "multipart/form-data; boundary=b", "without a 'model' field"),
])
def test_bad_bodies_are_400(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(ApiError) as caught:
        model_from_body(body, content_type)
    assert caught.value.status == 400 and message in caught.value.message
    assert caught.value.type == "invalid_request_error"
