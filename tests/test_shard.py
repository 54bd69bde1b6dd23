"""Many daemons over one set of cameras: rendezvous hashing, and two real daemons over four
file sources publishing to one real mosquitto."""

import os
import re
import signal
import subprocess
import sys
from collections import Counter

import pytest
import yaml
from conftest import MEDIA, MODELS, REPO, VIDEOS
from mosquitto import Mosquitto, Subscriber, wait_for
from test_mqtt import PROCESSING

from streampose import shard

SOURCES = {"faint": "fall_faint_studio_1280x720.mp4", "chair": "fall_room_chair_320x240.mp4",
           "kitchen": "fall_cctv_restaurant_kitchen_slip_with_pot.mp4", "urfd": "fall_urfd_fall_from_chair_cam0_320x240.mp4"}


def test_every_source_has_exactly_one_owner_and_adding_a_daemon_moves_few():
    ids = [f"cam{i}" for i in range(3000)]
    for count in (1, 2, 3, 5):
        owners = [shard.owner(i, count) for i in ids]
        assert all(sum(shard.Shard(k, count).owns(i) for k in range(count)) == 1 for i in ids[:300])
        shares = Counter(owners)
        assert all(abs(shares[k] / len(ids) - 1 / count) < 0.04 for k in range(count)), shares
    # From 3 to 4 daemons only the sources the new one wins move (1/4 of them), and only to it.
    moved = [(a, b) for a, b in ((shard.owner(i, 3), shard.owner(i, 4)) for i in ids) if a != b]
    assert all(b == 3 for _, b in moved) and abs(len(moved) / len(ids) - 0.25) < 0.04


@pytest.mark.parametrize("text, expected", [("0/2", (0, 2)), ("1/2", (1, 2)), ("streampose-2/3", (2, 3)),
                                            ("web-cams-0/1", (0, 1))])
def test_shard_accepts_an_index_or_a_statefulset_pod_name(text, expected):
    parsed = shard.parse(text)
    assert (parsed.index, parsed.count) == expected


@pytest.mark.parametrize("text", ["2/2", "1", "a/b", "-1/2", "1/0", ""])
def test_a_bad_shard_is_one_line_naming_the_form(text):
    with pytest.raises(ValueError, match="expected I/N|from 0 to N-1"):
        shard.parse(text)


def test_two_daemons_share_four_sources_once_each_and_killing_one_loses_no_event_of_the_other(tmp_path):
    graph = tmp_path / "graph.yml"
    with Mosquitto(tmp_path / "broker") as broker:
        graph.write_text(yaml.safe_dump({
            "sources": [{"id": sid, "uri": str(VIDEOS / clip)} for sid, clip in SOURCES.items()],
            "stages": PROCESSING + [{"id": "mqtt", "type": "mqtt", "port": broker.port, "inputs": ["falls"]},
                                    {"id": "log", "type": "jsonl", "inputs": ["falls"]}],
            "runtime": {"metrics": {"bind": None}},
        }))
        subscriber = Subscriber(broker.port)
        daemons = []
        try:
            wait_for(subscriber.subscribed.is_set, 10, "the subscription")
            command = [sys.executable, "-m", "streampose", "run", str(graph), "--models", str(MODELS)]
            env = {k: v for k, v in os.environ.items() if k != shard.ENV}
            logs = [(tmp_path / f"daemon{k}.log").open("w+") for k in (0, 1)]
            daemons += [  # one by --shard, one by the variable with a StatefulSet pod name, as Kubernetes does
                subprocess.Popen(command + ["--shard", "0/2", "-o", str(tmp_path / "out0-killed")], cwd=REPO, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                subprocess.Popen(command + ["-o", str(tmp_path / "out1")], cwd=REPO,
                                 env={**env, shard.ENV: "streampose-1/2"}, stdout=logs[1], stderr=subprocess.STDOUT,
                                 text=True)]
            # Daemon 0 is killed once it is up, and started again as a supervisor would: the other
            # daemon goes on and loses nothing.
            nodes = [f"{os.uname().nodename}-shard{k}of2" for k in (0, 1)]
            wait_for(lambda: "online" in subscriber.on(f"/daemon/{nodes[0]}/availability"), 120, "daemon 0 up")
            daemons[0].send_signal(signal.SIGKILL)
            daemons[0].wait(10)
            daemons[0] = subprocess.Popen(command + ["--shard", "0/2", "-o", str(tmp_path / "out0")], cwd=REPO,
                                          env=env, stdout=logs[0], stderr=subprocess.STDOUT, text=True)
            for daemon in daemons:
                daemon.wait(400)
            outputs = [(tmp_path / f"daemon{k}.log").read_text() for k in (0, 1)]
            assert [d.returncode for d in daemons] == [0, 0], outputs
            raised = Counter()
            for output in outputs:
                for stream, events in re.findall(r"^  (\w+): .*\n    events: (.*)$", output, re.M):
                    for kind, n in re.findall(r"(\w+) x(\d+)", events):
                        raised[stream, kind] += int(n)
            assert sum(raised.values()) >= 1, outputs

            def all_arrived():
                got = Counter((e["stream"], e["kind"]) for e in subscriber.events())
                # The killed run may have sent some of its own sources' events before it died.
                return got if all(got[key] == n if shard.owner(key[0], 2) == 1 else got[key] >= n
                                  for key, n in raised.items()) else None
            received = wait_for(all_arrived, 20, "every event at the subscriber")
        finally:
            subscriber.close()
            for daemon in daemons:  # a failed test leaves no daemon behind
                if daemon.poll() is None:
                    daemon.kill()
                    daemon.wait()
    # Each source ran in exactly one daemon, whole.
    labels = yaml.safe_load((MEDIA / "labels.yml").read_text())
    for sid, clip in SOURCES.items():
        logs = [list((tmp_path / f"out{k}" / "jsonl").glob(f"{sid}*.jsonl")) for k in (0, 1)]
        owners = [k for k in (0, 1) if logs[k]]
        assert owners == [shard.owner(sid, 2)], (sid, logs)
        assert sum(1 for _ in logs[owners[0]][0].open()) == labels[clip]["frame_count"]
    survivor = [key for key in received if shard.owner(key[0], 2) == 1]
    assert sum(received[key] for key in survivor) == sum(raised[key] for key in survivor)  # nothing lost or twice
    assert any(shard.owner(stream, 2) == 1 for stream, _ in raised), "the surviving daemon raised no event to check"
    for node in nodes:
        assert subscriber.on(f"/daemon/{node}/availability")[-1] == "offline"
