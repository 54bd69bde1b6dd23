"""Dividing the machine's cores among a graph's inference engines and video decoders.

Every engine and decoder left to its defaults takes all the cores: on the 2-core machine two
2-thread OpenVINO engines and FFmpeg's frame-threaded decoders time-sliced the two cores, and
engine calls took 2-2.5x their standalone time inside the pipeline (issue 17: PicoDet 7.0 vs
2.8 ms, TinyPose 9.7 vs 4.1 ms). Stages run in their own threads, so engines run side by side:
the cores are split between them instead, and each decoder gets one thread.

  engine threads:  a stage whose work grows with the number of persons (keypoints: a batch of
                   crops per call) gets every core; the others cores // (CPU network stages),
                   at least 1; a stage's own `threads` parameter (> 0) wins. On 2 cores, the
                   keypoint engine at 2 threads and the detector at 1 (bf16, benchmarks.peer's
                   graph, files, 2 rounds alternating): crowd_walking_overhead (7.75 persons per
                   frame) 36-40 -> 51-53 frames/s, squat_side_view 145-163 -> 162-176,
                   office_man_walking 131-138 -> 132-141, mmaction2 two persons 102-111 ->
                   101-102. Both engines at 2 threads was worse (crowd 29-51, squat 125-138):
                   two parallel regions time-slicing two cores wait on each other's threads.
  decoder threads: 1 per source. One thread decodes the shared 1280x720 and 1920x1080 H.264
                   clips in 2.4 ms of CPU per frame (about 400 frames/s), 960x544 in 1.3 ms,
                   beyond what the engines take; FFmpeg's default (a thread per core) spent
                   the same or more CPU (2.6-2.8 ms) and adds a frame of delay per thread.
  OpenCV threads:  1, process-wide (OpenCV has no per-call setting; the pipeline applies it).
                   Stages are threads already, and OpenCV's pool workers spin after each
                   parallel call: the detector's cubic resize of a 960x544 frame to 192x192 cost
                   0.82 ms of process CPU with the default 2 threads, 0.26 ms with one (calls
                   0.5 ms apart; 1.20 against 0.55 ms 6 ms apart), and the spinning worker held a
                   core the engines wanted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from streampose.graph import schema

DECODER_THREADS = 1
OPENCV_THREADS = 1


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class CorePlan:
    """How a graph's threads share the cores.

    cores:           cores available to the process.
    engine_threads:  stage id -> CPU inference threads, for every network stage on the CPU.
    decoder_threads: threads of each source's video decoder.
    opencv_threads:  OpenCV's threads (process-wide).
    """

    cores: int
    engine_threads: dict[str, int]
    decoder_threads: int
    opencv_threads: int = OPENCV_THREADS

    def describe(self) -> str:
        engines = ", ".join(f"{stage} {n}" for stage, n in self.engine_threads.items()) or "none"
        return (f"{self.cores} cores: inference threads {engines}; "
                f"{self.decoder_threads} decoder thread per source; OpenCV {self.opencv_threads} thread")


def plan_cores(spec: schema.Graph, cores: int | None = None) -> CorePlan:
    """The core plan of `spec` on `cores` cores (default: those available)."""
    cores = cores or available_cores()
    networks = [st for st in spec.stages if isinstance(st, schema.ModelStage) and st.device == "cpu"]
    share = max(1, cores // len(networks)) if networks else cores
    return CorePlan(cores, {st.id: st.threads or (cores if st.PER_PERSON else share) for st in networks},
                    DECODER_THREADS)
