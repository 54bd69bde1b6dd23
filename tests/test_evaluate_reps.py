"""`streampose evaluate reps`: the repetition counter scored on labelled videos, through the full
graph and through its pose cache, per clip and per track, with leave-one-source-out
cross-validation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import MEDIA, MODELS, REPO, VIDEOS

LABELS = yaml.safe_load((MEDIA / "labels.yml").read_text())
# A counting clip, a two-person clip without repetitions, and a short fall: 367 frames.
CLIPS = ["reps_jumping_jacks_front_studio.mp4", "mmaction2_demo_skeleton_2persons.mp4",
         "fall_faint_studio_1280x720.mp4"]


def evaluate(out: Path, clips: list[str], *options: str) -> tuple[dict, subprocess.CompletedProcess]:
    """Run `streampose evaluate reps` over `clips`; its JSON report and the process."""
    result = subprocess.run([sys.executable, "-m", "streampose", "evaluate", "reps", "--videos", str(VIDEOS),
                             "--labels", str(MEDIA / "labels.yml"), "--models", str(MODELS), "-o", str(out),
                             *options, *(option for clip in clips for option in ("--clip", clip))],
                            capture_output=True, text=True, timeout=900, cwd=REPO)
    assert (out / "reps.json").is_file(), result.stderr
    report = json.loads((out / "reps.json").read_text())
    assert result.returncode == (0 if report["totals"]["exact"] == report["totals"]["clips"] else 1)
    assert "| clip | labelled | counted per track | exact |" in result.stdout
    assert (out / "reps.md").read_text().count("\n| ") >= len(clips) + 1
    return report, result


@pytest.fixture(scope="module")
def cached(tmp_path_factory) -> tuple[Path, dict]:
    """The clips from a fresh pose cache (built by this first run); the cache folder and report."""
    work = tmp_path_factory.mktemp("evaluate_reps")
    report, _ = evaluate(work / "out", CLIPS, "--cache", str(work / "cache"))
    return work / "cache", report


def test_counts_per_clip_and_track_and_nothing_on_other_clips(cached):
    _, report = cached
    results = {r["clip"]: r for r in report["clips"]}
    assert sorted(results) == sorted(CLIPS)
    jacks = results["reps_jumping_jacks_front_studio.mp4"]
    label = LABELS["reps_jumping_jacks_front_studio.mp4"]["reps"]["jumping_jack"]
    assert jacks["labelled"] == {"jumping_jack": label["count"]}
    assert jacks["counted"] == {"jumping_jack": label["count"]} and jacks["exact"]
    assert list(jacks["per_track"].values()) == [{"jumping_jack": label["count"]}]
    assert jacks["labelled_bottoms_s"] == sorted(label["bottoms_s"])
    assert jacks["largest_time_error_s"] <= 0.15
    for clip in CLIPS[1:]:
        assert results[clip]["labelled"] == {} and results[clip]["counted"] == {} and results[clip]["exact"]
    assert report["totals"] | {} == {"clips": 3, "exact": 3, "counting_clips": 1, "counting_exact": 1,
                                     "labelled_reps": label["count"], "counted_reps": label["count"],
                                     "other_clips": 2, "other_zero": 2}


def test_the_pose_cache_replay_counts_what_the_full_graph_counts(cached, tmp_path):
    cache, report = cached
    assert len(list(cache.glob("*.npz"))) == len(CLIPS)
    full, _ = evaluate(tmp_path / "full", CLIPS, "--no-cache")
    again, _ = evaluate(tmp_path / "again", CLIPS, "--cache", str(cache))
    assert len(list(cache.glob("*.npz"))) == len(CLIPS)   # read back, not rebuilt
    for a, b, c in zip(full["clips"], report["clips"], again["clips"]):
        assert a == b == c


def test_a_miscount_is_reported_and_fails_the_command(cached, tmp_path):
    """Feet never far enough apart for an open jumping jack: nothing is counted, the clip is not
    exact, the table says so and the command exits with 1."""
    cache, _ = cached
    report, result = evaluate(tmp_path / "out", CLIPS[:1], "--cache", str(cache), "--param",
                              "jumping_jack_feet_width=5.0")
    (jacks,) = report["clips"]
    assert jacks["counted"] == {} and not jacks["exact"] and result.returncode == 1
    assert "**NO**" in result.stdout


def test_leave_one_source_out_chooses_on_the_other_sources(cached, tmp_path):
    cache, _ = cached
    report, result = evaluate(tmp_path / "out", CLIPS, "--cache", str(cache), "--cv")
    cv = report["cv"]
    # mmaction2's clip is one of the project's first nine ("original"); the others name their repository.
    assert sorted(f["source"] for f in cv["folds"]) == ["THChen2002/medaipipe", "original"]
    assert sorted(c for f in cv["folds"] for c in f["clips"]) == sorted(CLIPS)
    assert [r["clip"] for r in cv["held_out"]] != [] and cv["held_out_totals"]["clips"] == len(CLIPS)
    assert set(cv["scores"]) == set(cv["in_sample_params"]) == set(cv["grid"])
    assert "## Leave-one-source-out" in (tmp_path / "out" / "reps.md").read_text()
    # --jobs 2: the scan in two spawned processes, each replaying the pose cache itself, scores alike
    parallel, _ = evaluate(tmp_path / "jobs", CLIPS, "--cache", str(cache), "--cv", "--jobs", "2")
    assert parallel["cv"]["scores"] == cv["scores"] and parallel["cv"]["folds"] == cv["folds"]


def test_an_unknown_clip_or_parameter_is_one_clear_line(tmp_path):
    for options, says in ((["--clip", "nope.mp4"], "nope.mp4"), (["--param", "squat_dept=0.5"], "squat_dept")):
        result = subprocess.run([sys.executable, "-m", "streampose", "evaluate", "reps", "--videos", str(VIDEOS),
                                 "--labels", str(MEDIA / "labels.yml"), "-o", str(tmp_path), *options],
                                capture_output=True, text=True, timeout=120, cwd=REPO)
        assert result.returncode != 0 and says in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_the_pose_cache_keys_on_the_networks_precision():
    # an entry made at bf16 must never be replayed for fp32 (keypoints move by a median 0.13% of
    # the box height, and five fall outcomes moved with them, docs/models.md)
    from streampose.evaluate import pose_cache

    clip, paths = VIDEOS / "squat_side_view.mp4", [MODELS]
    keys = {p: pose_cache.entry_key(clip, "picodet_s_192_pedestrian", "tinypose_128x96_ov", paths, p)
            for p in ("fp32", "bf16")}
    assert keys["fp32"] != keys["bf16"]
    assert pose_cache.entry_key(clip, "picodet_s_192_pedestrian", "tinypose_128x96_ov", paths) == keys["fp32"]
    assert "precision: bf16" in pose_cache.front_stages("d", "k", precision="bf16")


def test_a_lower_frame_rate_counts_on_the_labels_timeline(tmp_path):
    """--fps 10: the clip re-encoded at 10 frames a second, as a slower camera would send it; its
    three squats are counted and their bottoms reported on the labels' timeline (the re-encoded
    file starts two frames late, which the report takes out)."""
    report, _ = evaluate(tmp_path / "out", ["squat_side_view.mp4"], "--fps", "10", "--cache", str(tmp_path / "cache"))
    result = report["clips"][0]
    assert result["exact"] and result["counted"] == {"squat": 3}
    assert result["largest_time_error_s"] <= 0.15, (result["rep_times_s"], result["labelled_bottoms_s"])


def test_the_networks_are_chosen_on_the_command_line(tmp_path):
    """--detector / --keypoints: the evaluation runs the named networks (here the larger
    TinyPose), says so in its report, and keeps their poses in their own cache entries."""
    report, _ = evaluate(tmp_path / "out", ["squat_side_view.mp4"], "--cache", str(tmp_path / "cache"),
                         "--detector", "picodet_s_320_lcnet_pedestrian_ov", "--keypoints", "tinypose_256x192_ov")
    assert "picodet_s_320_lcnet_pedestrian_ov + tinypose_256x192_ov" in (tmp_path / "out" / "reps.md").read_text()
    assert report["clips"][0]["exact"] and report["clips"][0]["counted"] == {"squat": 3}
    assert len(list((tmp_path / "cache").glob("squat_side_view.*.npz"))) == 1
