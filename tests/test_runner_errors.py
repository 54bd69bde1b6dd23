"""A stage failing on every frame logs the error once in full, then only counts of it."""

import logging
import re

from streampose.runtime import runner
from streampose.runtime.runner import ErrorLog


def test_a_repeated_error_is_logged_once_then_counted(caplog, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(runner.time, "monotonic", lambda: clock[0])
    errors = ErrorLog("record")
    with caplog.at_level(logging.ERROR, logger="streampose.runtime"):
        for i in range(1000):
            clock[0] += 0.015  # 15 s in all: one count logged after REPEAT_LOG_S, one at the next error
            errors.failed(f"stream cam1 frame {i}", ValueError("x" * 10_000_000))
        errors.failed("stream cam1 frame 1000", KeyError("other"))
        errors.close()
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 4, lines
    assert lines[0].startswith("stage record failed on stream cam1 frame 0: ValueError: xxx")
    first = re.fullmatch(r"stage record: the same error repeated (\d+) times \(last on stream cam1 frame (\d+)\): "
                         r"ValueError: x+", lines[1])
    assert first and int(first[1]) == int(first[2]) and 660 <= int(first[1]) <= 670  # 10 s / 0.015 s
    assert lines[2].startswith(f"stage record: the same error repeated {999 - int(first[1])} times "
                               f"(then a different error): ValueError: xxx")
    assert lines[3].startswith("stage record failed on stream cam1 frame 1000: ")
    assert all(len(line) < 6 * runner.MAX_MESSAGE_CHARS for line in lines)
