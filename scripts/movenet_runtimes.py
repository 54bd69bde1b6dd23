"""Which runtime to trust with the int8 MoveNet file: OpenVINO or LiteRT (the reference TFLite
runtime)? Both get identical 192x192 crops; each one's keypoints are compared with
PicoDet-320 + TinyPose-256x192 on the same frames (an independent reference).

    # 1. crops, OpenVINO outputs and top-down references (the streampose venv)
    python scripts/movenet_runtimes.py prepare build/movenet_runtimes.npz
    # 2. LiteRT outputs (a venv with `pip install ai-edge-litert numpy`)
    /tmp/litert-venv/bin/python scripts/movenet_runtimes.py litert build/movenet_runtimes.npz
    # 3. the table (docs/models.md)
    python scripts/movenet_runtimes.py report build/movenet_runtimes.npz
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

MODELS = Path(os.environ.get("STREAMPOSE_MODELS", "../shared/models"))
MEDIA = Path(os.environ.get("STREAMPOSE_SHARED", "../shared")) / "media"
MOVENET = (MODELS / "movenet_singlepose_lightning_int8_tflite"
           / "lite-model_movenet_singlepose_lightning_tflite_int8_4.tflite")
VIDEOS = ("squat_side_view.mp4", "office_man_walking_1280x720.mp4", "fall_faint_studio_1280x720.mp4",
          "reps_squats_side_studio.mp4", "reps_lunges_side_studio.mp4")
EVERY = 10


def prepare(out: Path) -> None:
    import av

    from streampose.frame import Frame
    from streampose.graph import schema
    from streampose.posenets import movenet
    from streampose.runtime.stage import StageContext
    from streampose.stages.detector import DetectorStage
    from streampose.stages.keypoints import KeypointStage
    from streampose.stages.pose import PoseStage

    context = StageContext(graph_dir=Path("."), output_dir=Path("."), model_paths=[MODELS])
    pose = PoseStage("m", schema.Pose(id="m", type="pose", network="movenet", model=MOVENET.parent.name), context)
    det = DetectorStage("d", schema.Detector(id="d", type="detector", model="picodet_s_320_lcnet_pedestrian_ov"),
                        context)
    kp = KeypointStage("k", schema.Keypoints(id="k", type="keypoints", model="tinypose_256x192_ov"), context)
    tensors, openvino, crops, references = [], [], [], []
    for video in VIDEOS:
        with av.open(str(MEDIA / "video" / video)) as container:
            for i, decoded in enumerate(container.decode(video=0)):
                image = decoded.to_ndarray(format="bgr24")
                crop = pose.estimator.crops.get(video, movenet.whole_image(image.shape[1], image.shape[0]))
                f = Frame(video, i, image, 0.0, i / 30)
                pose.process([f])                     # advances the crop as the stage does
                if i % EVERY:
                    continue
                ref = Frame(video, i, image, 0.0, i / 30)
                det.process([ref])
                kp.process([ref])
                if len(ref.persons) != 1:             # single-person frames only
                    continue
                tensor = movenet.crop_input(image, crop, 192)
                output = pose.estimator.engine.run({pose.estimator.input: tensor[None]})[pose.estimator.output]
                tensors.append(tensor)
                openvino.append(output.reshape(17, 3))
                crops.append(crop)
                references.append(ref.persons.keypoints[0])
    np.savez_compressed(out, tensors=np.stack(tensors), openvino=np.stack(openvino), crops=np.stack(crops),
                        references=np.stack(references))
    print(f"{len(tensors)} frames -> {out}")


def litert(out: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    data = dict(np.load(out))
    interpreter = Interpreter(model_path=str(MOVENET))
    interpreter.allocate_tensors()
    feed, fetch = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
    results = []
    for tensor in data["tensors"]:
        interpreter.set_tensor(feed, tensor[None])
        interpreter.invoke()
        results.append(interpreter.get_tensor(fetch).reshape(17, 3))
    data["litert"] = np.stack(results)
    np.savez_compressed(out, **data)
    print(f"{len(results)} frames run by LiteRT -> {out}")


def report(out: Path) -> None:
    from streampose.posenets import movenet

    data = np.load(out)
    refs = data["references"]
    torso = np.linalg.norm((refs[:, 5, :2] + refs[:, 6, :2]) / 2 - (refs[:, 11, :2] + refs[:, 12, :2]) / 2, axis=1)
    decoded = {name: np.stack([movenet.decode(o, c) for o, c in zip(data[name], data["crops"])])
               for name in ("openvino", "litert")}
    print(f"{len(refs)} single-person frames (every {EVERY}th of {', '.join(VIDEOS)})\n")
    print("| runtime | median px to TinyPose-256 | PCK@0.1 torso | PCK@0.2 torso |")
    print("|---|---|---|---|")
    for name, keypoints in decoded.items():
        both = (refs[..., 2] > 0.5) & (keypoints[..., 2] > 0.3)
        error = np.linalg.norm(keypoints[..., :2] - refs[..., :2], axis=-1)
        relative = error / torso[:, None]
        print(f"| {name} | {np.median(error[both]):.1f} | {(relative[both] < 0.1).mean():.3f} | "
              f"{(relative[both] < 0.2).mean():.3f} |")
    gap = np.linalg.norm(decoded["openvino"][..., :2] - decoded["litert"][..., :2], axis=-1)
    confident = decoded["litert"][..., 2] > 0.3
    print(f"\nOpenVINO vs LiteRT on the same crops: median {np.median(gap[confident]):.1f} px, "
          f"95th percentile {np.percentile(gap[confident], 95):.1f} px, max {gap[confident].max():.0f} px "
          f"(joints LiteRT scores over 0.3; over all joints {gap.max():.0f} px); "
          f"score difference median {np.median(np.abs(data['openvino'][..., 2] - data['litert'][..., 2])):.3f}")


if __name__ == "__main__":
    {"prepare": prepare, "litert": litert, "report": report}[sys.argv[1]](Path(sys.argv[2]))
