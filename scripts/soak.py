"""Soak test, run by hand: a daemon left alone for hours must not grow.

    python scripts/soak.py --minutes 120 [--out out/soak] [--sample-s 30]

Runs a real daemon (run_pipeline.py) on a written graph: two looping shared videos played in
real time like cameras -> detector -> keypoints -> tracker -> smoother -> fall plugin ->
publisher, a recorder with 60 s segments keeping 5 files per stream, fall clips (a clip every
loop of the fall video; clips have no retention of their own), JSONL rotated at 1 MiB keeping 3
files per stream, and a disk budget over the whole output folder, so every rotation and
retention path runs many times. Every `--sample-s` it reads the daemon's resident memory, open file descriptors and
threads (/proc/PID) and the bytes under the output folder, and writes them to
<out>/soak.csv. At the end it stops the daemon with SIGTERM and prints the first, the middle
and the last samples and the growth between the middle and the end, which is what must be
flat (the first minutes fill caches, buffers and the retention windows).
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
VIDEOS = REPO.parent / "shared" / "media" / "video"


def graph(out: Path, publish_port: int, budget_mb: float) -> dict:
    live = {"realtime": True, "loop": True}
    return {
        "sources": [{"id": "chair", "uri": str(VIDEOS / "fall_room_chair_320x240.mp4"), "options": live},
                    {"id": "jacks", "uri": str(VIDEOS / "jumping_jacks_Ibbu_1.mp4"), "options": live}],
        "stages": [
            {"id": "detect", "type": "detector", "model": "picodet_s_192_lcnet_pedestrian_ov",
             "batch": {"max_size": 2}},
            {"id": "pose", "type": "keypoints", "model": "tinypose_128x96_ov", "batch": {"max_size": 4}},
            {"id": "track", "type": "tracker", "algorithm": "ocsort"},
            {"id": "smooth", "type": "smoother"},
            {"id": "fall", "type": "plugin", "plugin": "fall"},
            {"id": "publish", "type": "publisher", "bind": f"tcp://127.0.0.1:{publish_port}"},
            {"id": "record", "type": "recorder", "inputs": ["fall"], "path": "rec/{stream}_{date}_{time}.mp4",
             "segment_s": 60, "keep_files": 5},
            {"id": "clips", "type": "clips", "inputs": ["fall"], "events": ["fall_confirmed"], "pre_s": 2,
             "post_s": 2, "path": "clips/{stream}_{date}_{time}_{event}.mp4"},
            {"id": "log", "type": "jsonl", "inputs": ["fall"], "path": "jsonl/{stream}.jsonl",
             "segment_bytes": 1 << 20, "keep_files": 3},
        ],
        "runtime": {"output_dir": str(out), "metrics": {"bind": None}, "log_level": "warning",
                    "disk_budget_mb": budget_mb},
    }


def sample(pid: int, out: Path) -> dict:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {"t_s": 0.0, "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
            "fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": int(status["Threads"]),
            "disk_mb": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20,
            "files": sum(1 for p in out.rglob("*") if p.is_file())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=120)
    parser.add_argument("--sample-s", type=float, default=30)
    parser.add_argument("--out", type=Path, default=Path("out/soak"))
    parser.add_argument("--port", type=int, default=5599, help="the publisher's port")
    parser.add_argument("--budget-mb", type=float, default=55,
                        help="runtime.disk_budget_mb (the recordings and JSONL alone settle at about 50 MB)")
    args = parser.parse_args(argv)

    out = args.out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    graph_path = out / "soak.yml"
    graph_path.write_text(yaml.safe_dump(graph(out / "run", args.port, args.budget_mb), sort_keys=False))
    log = (out / "daemon.log").open("w")
    daemon = subprocess.Popen([sys.executable, str(REPO / "run_pipeline.py"), str(graph_path)],
                              stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    samples = []
    started = time.monotonic()
    try:
        with (out / "soak.csv").open("w", newline="") as table:
            writer = None
            while time.monotonic() - started < args.minutes * 60:
                if daemon.poll() is not None:
                    print(f"the daemon exited with {daemon.returncode}; see {out / 'daemon.log'}", file=sys.stderr)
                    return 1
                row = sample(daemon.pid, out / "run") | {"t_s": round(time.monotonic() - started)}
                samples.append(row)
                if writer is None:
                    writer = csv.DictWriter(table, fieldnames=list(row))
                    writer.writeheader()
                writer.writerow(row)
                table.flush()
                time.sleep(args.sample_s)  # the sampling period, not a wait for a condition
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(60)
        log.close()
    middle, last = samples[len(samples) // 2], samples[-1]
    for name, row in (("first", samples[0]), ("middle", middle), ("last", last)):
        print(f"{name:>6}: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    print("growth middle -> last: " + ", ".join(f"{k} {last[k] - middle[k]:+.1f}" for k in last if k != "t_s"))
    print(f"daemon exit code after SIGTERM: {code}; samples in {out / 'soak.csv'}")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
