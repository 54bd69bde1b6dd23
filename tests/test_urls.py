"""Camera credentials never show: every URL in a text loses its user and password."""

import pytest

from streampose.sources.urls import mask_credentials


@pytest.mark.parametrize("text, expected", [
    ("rtsp://admin:secret@10.0.0.5:554/stream1", "rtsp://***@10.0.0.5:554/stream1"),
    ("rtsp://admin:p@ss/w@rd@cam.local/live", "rtsp://***@cam.local/live"),
    ("rtsp://token@cam.local/live", "rtsp://***@cam.local/live"),
    ("cannot open: [Errno 111] Connection refused: 'rtsps://u:a/b?c#d@h/x'",
     "cannot open: [Errno 111] Connection refused: 'rtsps://***@h/x'"),
    ("read failed: 'http://u:p%40w@h:8080/v' then rtmp://k@h2/app", "read failed: 'http://***@h:8080/v' then "
     "rtmp://***@h2/app"),
    ("rtsp://cam.local:554/stream1", "rtsp://cam.local:554/stream1"),
])
def test_credentials_are_masked(text, expected):
    assert mask_credentials(text) == expected
