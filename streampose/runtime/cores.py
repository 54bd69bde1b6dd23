"""Dividing the machine's cores among a graph's inference engines and video decoders.

Every engine and decoder left to its defaults takes all the cores: on the 2-core machine two
2-thread OpenVINO engines and FFmpeg's frame-threaded decoders time-sliced the two cores, and
engine calls took 2-2.5x their standalone time inside the pipeline (issue 17: PicoDet 7.0 vs
2.8 ms, TinyPose 9.7 vs 4.1 ms). Stages run in their own threads, so engines run side by side:
the cores are split between them instead, and each decoder gets one thread.

  engine threads:  cores // (CPU network stages), at least 1; a stage's own `threads`
                   parameter (> 0) wins.
  parallel runs:   a stage whose work grows with the number of persons (keypoints: a batch of
                   crops per call) may run its crops as up to cores // (its threads) runs at once,
                   each on its own threads (OpenVINO CPU streams), when it has crops enough
                   (stages/keypoints.py); 1 when its `threads` is set. A crowd keeps both cores
                   busy while a lone person costs no more: on 2 cores, bf16, benchmarks.peer's
                   graph, crowd_walking_overhead (7.75 persons per frame) 38-40 -> 50-55
                   frames/s; squat_side_view, office_man_walking and mmaction2 (1-2 persons)
                   unchanged within the rounds' spread; 70 MB more memory (each batch size
                   compiled for 2 streams). Giving the keypoint engine 2 threads instead reached
                   51-53 frames/s on the crowd, but four live streams then took 1.73-1.78 cores
                   instead of 1.55-1.56 and dropped frames: a parallel region over a batch of 1-2
                   crops spends more waiting than it saves.
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
    parallel_runs:   stage id -> engine runs that may go at once, for every network stage on the CPU.
    decoder_threads: threads of each source's video decoder.
    opencv_threads:  OpenCV's threads (process-wide).
    """

    cores: int
    engine_threads: dict[str, int]
    parallel_runs: dict[str, int]
    decoder_threads: int
    opencv_threads: int = OPENCV_THREADS

    def describe(self) -> str:
        engines = ", ".join(f"{stage} {n}" + (f" x {self.parallel_runs[stage]} runs at once"
                                                if self.parallel_runs[stage] > 1 else "")
                            for stage, n in self.engine_threads.items()) or "none"
        return (f"{self.cores} cores: inference threads {engines}; "
                f"{self.decoder_threads} decoder thread per source; OpenCV {self.opencv_threads} thread")


def plan_cores(spec: schema.Graph, cores: int | None = None) -> CorePlan:
    """The core plan of `spec` on `cores` cores (default: those available)."""
    cores = cores or available_cores()
    networks = [st for st in spec.stages if isinstance(st, schema.ModelStage) and st.device == "cpu"]
    share = max(1, cores // len(networks)) if networks else cores
    parallel_runs = {st.id: max(1, cores // share) if st.PER_PERSON and not st.threads else 1 for st in networks}
    return CorePlan(cores, {st.id: st.threads or share for st in networks}, parallel_runs, DECODER_THREADS)
