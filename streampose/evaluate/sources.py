"""The labelled clips an evaluation runs on: the command-line arguments that name them, and where
each comes from, for leave-one-source-out cross-validation."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import tempfile
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from streampose.evaluate import pose_cache
from streampose.posenets.networks import NETWORK_KINDS


def add_clip_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments every `streampose evaluate` command shares: which clips and labels, which
    models, and how poses are found (the pose cache, the full graph or a detector-free network)."""
    shared = Path(os.environ.get("STREAMPOSE_SHARED", Path.cwd().parent / "shared"))
    p.add_argument("--videos", type=Path, default=shared / "media" / "video")
    p.add_argument("--labels", type=Path, default=shared / "media" / "labels.yml")
    p.add_argument("--sources", type=Path, help="SOURCES.md for --cv (default: beside the labels)")
    p.add_argument("--models", type=Path, action="append", default=[], help="model folder (repeatable)")
    p.add_argument("--clip", action="append", help="only this clip (file name); repeatable")
    p.add_argument("--cache", type=Path, default=pose_cache.DEFAULT_DIR, help="pose cache folder")
    p.add_argument("--no-cache", action="store_true", help="run the full graph (detector and keypoints too)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="the networks' precision (bf16: OpenVINO on a CPU with native bf16; docs/models.md)")
    p.add_argument("--detector", metavar="MODEL", help="the person detector (default: the command's graph's)")
    p.add_argument("--keypoints", metavar="MODEL", help="the keypoint network (default: the command's graph's)")
    p.add_argument("--pose", choices=NETWORK_KINDS, help="the full graph with a detector-free pose stage with "
                   "this network (its shared model folder) in place of detector + keypoints (docs/models.md)")
    p.add_argument("--fps", type=float, help="re-encode the clips at this frame rate first (the first frame of "
                   "every 1/F s, same timestamps), as a slower camera would send them")


def user_error(message: str) -> None:
    """A mistake in the command line: one line, exit status 2, as everywhere in the CLI."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


def labelled_clips(args: argparse.Namespace) -> tuple[dict, list[str]]:
    """The labels file and the clips to run (`--clip`, else every labelled one); a clip not
    labelled there, or not in the videos folder, is a user error."""
    labels = yaml.safe_load(args.labels.read_text())
    names = args.clip or sorted(labels)
    unknown = [n for n in names if n not in labels or not (args.videos / n).is_file()]
    if unknown:
        user_error(f"--clip {', '.join(unknown)}: not labelled in {args.labels} or not in {args.videos}; "
                   f"give a file name labelled there")
    return labels, names


def clip_files(videos: Path, names: list[str], fps: float | None
               ) -> tuple[list[Path], dict[str, float], tempfile.TemporaryDirectory | None]:
    """The clips' video files, and for each what to add to a time in its file to get the labels'
    time. With `fps`, the clips re-encoded at that rate into a scratch folder, which lasts as
    long as the returned TemporaryDirectory (None without); same file names, so the same stream ids."""
    if not fps:
        return [videos / n for n in names], dict.fromkeys(names, 0.0), None
    scratch = tempfile.TemporaryDirectory(prefix="evaluate_fps_")
    folder = Path(scratch.name)
    offsets = {n: resample(videos / n, folder / n, fps) for n in names}
    return [folder / n for n in names], offsets, scratch


def parse_params(items: list[str], params_class: type[BaseModel]) -> dict:
    """`--param KEY=VALUE` items (values read as YAML) as a plugin parameter dict, checked by the
    plugin's own schema; a bad one exits with status 2 (a user error, as everywhere in the CLI)
    and one line naming the key."""
    params = {}
    for item in items:
        key, _, value = item.partition("=")
        params[key] = yaml.safe_load(value)
    try:
        params_class.model_validate(params)
    except ValidationError as error:
        user_error("--param: " + "; ".join(f"{'.'.join(map(str, e['loc'])) or 'params'}: {e['msg']}"
                                           for e in error.errors()))
    return params


def clip_sources(sources_md: Path, names: list[str]) -> dict[str, str]:
    """Clip -> the repository it came from (SOURCES.md's table beside the labels); clips not
    in it (the project's first nine, of no stated repository) are one source, "original"."""
    repos = {}
    for line in sources_md.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 2 and re.search(r"\.(mp4|avi|mkv|mov)$", cells[0]):
            repos[cells[0]] = cells[1]
    return {n: repos.get(n, "original") for n in names}


def resample(source: Path, target: Path, fps: float) -> float:
    """Write `source` to `target` keeping the first frame of every 1/fps seconds (each at its
    own media time); what to add to a time in the written file to get the source's time."""
    import av

    from streampose.sinks.recorder import Mp4Writer

    writer, last_step, first_time = None, None, 0.0
    with av.open(str(source)) as container:
        for frame in container.decode(video=0):
            step = math.floor(frame.time * fps + 1e-6)
            if step == last_step:
                continue
            last_step = step
            image = frame.to_ndarray(format="bgr24")
            if writer is None:
                writer = Mp4Writer(target, image.shape[1], image.shape[0], crf=18, preset="veryfast")
                first_time = frame.time
            writer.write(image, frame.time)
    writer.close()
    # The written file's frames start at x264's B-frame delay, not 0 (a fragmented MP4 has no
    # edit list): two frames, 0.42 s at 5 fps, by which `evaluate falls --fps` scored every alarm
    # late before this was taken out.
    with av.open(str(target)) as written:
        stream = written.streams.video[0]
        delay = float(stream.start_time * stream.time_base)
    return first_time - delay
