"""The live view in a real headless browser (Debian's chromium, driven by selenium): the page
loads, each stream's video changes, a fall alarm from a real clip appears in the feed within a
second of being raised, its clip plays, and acknowledging it sends `alarm_acknowledged` on."""

import json
import os
import shutil
import statistics
import time

import pytest
import yaml
from conftest import MODELS, REPO, VIDEOS, first_frames
from mosquitto import wait_for
from test_mqtt import PROCESSING
from test_webhook import Receiver

from streampose.frame import Event, Frame
from streampose.graph import schema
from streampose.graph.loader import load_graph
from streampose.runtime.metrics import Metrics
from streampose.runtime.monitor import MonitorServer
from streampose.runtime.pipeline import Pipeline
from streampose.runtime.stage import StageContext
from streampose.sinks.live import LiveStage
from streampose.web.app import LiveView

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--window-size=1200,640", "--autoplay-policy=no-user-gesture-required")


@pytest.fixture
def browser():
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail("chromium and chromium-driver are not installed: run `make test-deps`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def live_graph(tmp_path, hook_url: str):
    path = tmp_path / "graph.yml"
    realtime = {"realtime": True, "loop": True}
    path.write_text(yaml.safe_dump({
        "sources": [{"id": "fall", "uri": str(VIDEOS / "fall_faint_studio_1280x720.mp4"), "options": realtime},
                    {"id": "squat", "uri": str(VIDEOS / "squat_side_view.mp4"), "options": realtime}],
        "stages": PROCESSING + [
            {"id": "clips", "type": "clips", "inputs": ["falls"], "events": ["fall_confirmed"], "pre_s": 1.0,
             "post_s": 1.0},
            {"id": "live", "type": "live", "inputs": ["falls"]},
            {"id": "hook", "type": "webhook", "inputs": ["live"], "url": hook_url,
             "events": ["fall_confirmed", "alarm_acknowledged"], "backoff_s": 0.05},
        ],
        "runtime": {"metrics": {"bind": "127.0.0.1:0"}},
    }))
    return load_graph(path)


def test_the_page_shows_live_video_the_alarm_within_a_second_its_clip_and_acknowledges(tmp_path, browser):
    receiver = Receiver([])
    graph = live_graph(tmp_path, receiver.url)
    monitor = MonitorServer("127.0.0.1:0", LiveView(lambda: monitor.pipeline, None).routes())
    monitor.start()
    pipeline = Pipeline(graph, model_paths=[MODELS], output_dir=tmp_path / "out")
    monitor.attach(pipeline)
    live = pipeline.runners["live"].stage
    try:
        browser.get(f"http://{monitor.address}/")
        # The page opens its WebSocket and watches both streams (it learns them from the stats message).
        wait_for(lambda: all(live._streams[s].watchers == 1 for s in ("fall", "squat")), 15, "the page to watch")
        pipeline.start()

        def shown(stream):
            return int(browser.execute_script(
                f"return document.querySelector('[data-stream={stream}] img').dataset.shown || 0"))
        for stream in ("fall", "squat"):
            wait_for(lambda: shown(stream) >= 3, 60, f"three frames of {stream} shown")
        first = {s: browser.find_element("css selector", f"[data-stream={s}] img").screenshot_as_png
                 for s in ("fall", "squat")}
        for stream in ("fall", "squat"):
            seen = shown(stream)
            wait_for(lambda: shown(stream) >= seen + 3, 30, f"{stream}'s video to move on")
            assert browser.find_element("css selector", f"[data-stream={stream}] img").screenshot_as_png \
                != first[stream], f"{stream}'s picture did not change"

        alarm = wait_for(lambda: browser.find_elements("css selector", ".event[data-kind=fall_confirmed]"), 60,
                         "a fall alarm in the feed")[-1]
        item_id = int(alarm.get_attribute("id").removeprefix("event-"))
        item = next(i for i in live.feed if i.id == item_id)
        delay_ms = int(alarm.get_attribute("data-received")) - item.raised_at * 1000
        assert delay_ms < 1000, f"the alarm reached the page {delay_ms:.0f} ms after it was raised"
        # The snapshot is fetched once the alarm is in the page; wait for it to load, not for a guess.
        wait_for(lambda: browser.execute_script("return arguments[0].querySelector('img.snapshot').naturalWidth",
                                                alarm) > 0, 10, "the alarm's snapshot to load")

        video = wait_for(lambda: alarm.find_elements("css selector", "video.clip"), 30, "the alarm's clip")[0]
        browser.execute_script("arguments[0].play()", video)
        wait_for(lambda: browser.execute_script("return arguments[0].currentTime", video) > 0.3, 15,
                 "the clip to play")
        assert browser.execute_script("return arguments[0].error", video) is None

        alarm.find_element("css selector", "button").click()
        wait_for(lambda: "acknowledged" in alarm.get_attribute("class"), 5, "the page to show the acknowledgement")
        acked = wait_for(lambda: [json.loads(b) for _, b in receiver.requests
                                  if json.loads(b)["kind"] == "alarm_acknowledged"], 15, "alarm_acknowledged sent on")
        assert acked[0]["stream"] == "fall" and acked[0]["data"]["kind"] == "fall_confirmed"

        wait_for(lambda: browser.find_element("css selector", "[data-stream=fall] .state").text in
                 ("running", "overloaded"), 5, "the stream's state on the page")  # overloaded: a busy machine
        assert " fps · " in browser.find_element("css selector", "[data-stream=squat] .numbers").text
        latencies = browser.execute_script("return window.streamposeLatency")
        for stream, values in latencies.items():
            print(f"live view glass-to-glass (capture to shown) {stream}: median "
                  f"{statistics.median(values):.0f} ms over {len(values)} frames")
        shot = tmp_path / "live_view.png"
        browser.save_screenshot(str(shot))
        if os.environ.get("STREAMPOSE_UPDATE_DOCS"):
            from PIL import Image  # 256 colours: a third of the bytes, for the docs
            Image.open(shot).convert("RGB").quantize(256).save(REPO / "docs" / "images" / "live_view.png", optimize=True)
    finally:
        pipeline.stop()
        pipeline.shutdown()
        monitor.close()
        receiver.close()


def test_frames_are_encoded_only_while_watched_once_however_many_watch(tmp_path):
    stage = LiveStage("live", schema.Live(id="live", type="live", max_fps=60),
                      StageContext(tmp_path, tmp_path, streams=["cam"], metrics=Metrics()))
    frames = first_frames(VIDEOS / "fall_faint_studio_1280x720.mp4", 6)
    told = []
    stage.listeners.append(lambda what, subject: told.append(what))

    def feed(i, events=()):
        image, media_time = frames[i]
        stage.process([Frame("cam", i, image, time.time(), media_time, events=list(events))])
    feed(0)
    assert stage.latest("cam") is None and stage.context.metrics.count("live_frames") == 0
    stage.watch("cam")
    stage.watch("cam")
    feed(1)
    latest = stage.latest("cam")
    assert latest is not None and latest.jpeg[:2] == b"\xff\xd8" and told == ["frame"]
    assert stage.context.metrics.count("live_frames") == 1  # two watchers, one encoding
    stage.unwatch("cam")
    stage.unwatch("cam")
    feed(2, [Event("fall_confirmed", "cam", 1, frames[2][1], time.time())])
    assert stage.context.metrics.count("live_frames") == 1 and stage.latest("cam").seq == latest.seq
    assert [i.message["kind"] for i in stage.feed] == ["fall_confirmed"] and told == ["frame", "event"]
    assert stage.feed[0].snapshot[:2] == b"\xff\xd8"  # events get their snapshot, watched or not


def test_an_event_raised_after_the_cameras_last_frame_joins_the_feed_without_a_snapshot(tmp_path):
    # A fall confirmed because the camera dropped while someone lay down rides on no frame
    # (Stage.emit -> on_events): the feed shows it, and its snapshot is a clear 404.
    import asyncio
    from types import SimpleNamespace

    from starlette.requests import Request

    stage = LiveStage("live", schema.Live(id="live", type="live"),
                      StageContext(tmp_path, tmp_path, streams=["cam"], metrics=Metrics()))
    told = []
    stage.listeners.append(lambda what, subject: told.append(what))
    stage.on_events("cam", [Event("fall_confirmed", "cam", 3, 12.5, time.time()), Event("custom", "cam", 3, 12.5, 0.0)])
    assert [i.message["kind"] for i in stage.feed] == ["fall_confirmed"] and told == ["event"]
    assert stage.feed[0].message["frame"] is None and stage.feed[0].snapshot == b""
    holder = SimpleNamespace(runners={"live": SimpleNamespace(stage=stage)})   # what the page reads of a pipeline
    request = Request({"type": "http", "method": "GET", "path": "/", "query_string": b"", "headers": [],
                       "path_params": {"id": stage.feed[0].id}})
    answer = asyncio.run(LiveView(lambda: holder, None).snapshot(request))
    assert answer.status_code == 404 and b"outside any frame" in answer.body


def test_beyond_loopback_the_page_needs_the_token_and_the_probes_do_not(tmp_path):
    import urllib.error
    import urllib.request

    token = "a-token-of-at-least-16"
    monitor = MonitorServer("127.0.0.1:0", LiveView(lambda: monitor.pipeline, token).routes())
    monitor.start()
    base = f"http://{monitor.address}"

    def get(path, headers=None):
        try:
            with urllib.request.urlopen(urllib.request.Request(base + path, headers=headers or {}), timeout=5) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read()
    try:
        wait_for(lambda: get("/livez")[0] == 200, 10, "the server")
        assert get("/")[0] == 401 and get("/api/streams")[0] == 401 and get("/?token=wrong-token-xxxxxx")[0] == 401
        status, headers, body = get(f"/?token={token}")
        assert status == 200 and b"<title>streampose live</title>" in body
        cookie = headers["set-cookie"].split(";")[0]
        assert "HttpOnly" in headers["set-cookie"] and "SameSite=strict" in headers["set-cookie"]
        assert get("/api/streams", {"Cookie": cookie})[0] == 200
        assert get("/metrics")[0] == 200 and get("/readyz")[0] == 503  # open; starting
    finally:
        monitor.close()


def test_the_daemon_refuses_to_show_cameras_beyond_loopback_without_a_token(tmp_path):
    import subprocess
    import sys

    graph = tmp_path / "graph.yml"
    graph.write_text(yaml.safe_dump({"sources": [{"id": "cam", "uri": str(VIDEOS / "fall_faint_studio_1280x720.mp4")}],
                                     "stages": [{"id": "live", "type": "live"}],
                                     "runtime": {"metrics": {"bind": "0.0.0.0:0"}}}))
    result = subprocess.run([sys.executable, "-m", "streampose", "run", str(graph)], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("set runtime.metrics.token (e.g. ${STREAMPOSE_WEB_TOKEN}, 16 characters "
                                          "or more) or bind 127.0.0.1")


def test_a_page_that_stops_reading_gets_the_newest_frame_later_not_a_backlog(tmp_path):
    import socket
    import struct

    import websocket  # websocket-client, a plain client that can stop reading

    path = tmp_path / "graph.yml"
    path.write_text(yaml.safe_dump({
        "sources": [{"id": "cam", "uri": str(VIDEOS / "fall_faint_studio_1280x720.mp4"),
                     "options": {"realtime": True, "loop": True}}],
        "stages": [{"id": "live", "type": "live", "max_fps": 60, "width": 1280, "jpeg_quality": 95}],
        "runtime": {"metrics": {"bind": None}}}))
    pipeline = Pipeline(load_graph(path), output_dir=tmp_path / "out")
    monitor = MonitorServer("127.0.0.1:0", LiveView(lambda: monitor.pipeline, None).routes())
    monitor.start()
    monitor.attach(pipeline)
    live = pipeline.runners["live"].stage
    client = websocket.create_connection(f"ws://{monitor.address}/ws", timeout=10,
                                         sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    try:
        client.send(json.dumps({"watch": ["cam"]}))
        pipeline.start()
        # The page reads nothing while the stage encodes 150 frames (~150 KiB each, ~20 MiB in all).
        wait_for(lambda: pipeline.metrics.count("live_frames") >= 150, 60, "150 frames encoded")
        newest = live.latest("cam").seq
        received = 0
        while True:
            message = client.recv()
            if isinstance(message, bytes):
                received += 1
                length = struct.unpack(">H", message[:2])[0]
                if json.loads(message[2:2 + length])["seq"] >= newest:
                    break
        # What the socket buffers held while the page did not read, then the newest: not all 150.
        assert received < 60, f"{received} frames before the newest: a backlog"
        assert pipeline.metrics.count("drops") == 0  # and the graph never waited for the page
    finally:
        client.close()
        pipeline.stop()
        pipeline.shutdown()
        monitor.close()
