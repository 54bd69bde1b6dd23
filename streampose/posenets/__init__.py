"""Pose networks that need no person detector, as pure numpy: pre-processing, decoding,
grouping and keypoint-layout conversion. The `pose` stage (streampose.stages.pose) runs them.

    layouts    keypoint layouts other than COCO-17 and their conversion to it (the one place)
    paf        bottom-up multi-person: heatmap peaks + part-affinity-field grouping (OpenPose)
    movenet    MoveNet single-person: Google's crop-from-previous-keypoints algorithm, decoding
    blazepose  BlazePose: SSD anchors, detection decoding, rotated ROI, landmark decoding
    networks   reading these networks' files (they have no infer_cfg.yml)
"""
