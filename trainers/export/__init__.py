"""From a training checkpoint to model folders for every engine streampose runs.

    python -m trainers.export model CHECKPOINT --out DIR        Paddle, OpenVINO IR, ONNX folders
    python -m trainers.export tensorrt DIR --precision fp16 int8 --calib CROPS
                                                                 TensorRT engines, built ahead of time
    python -m trainers.export quantize DIR_ov --calib CROPS [--val-annotations J --val-images I]
                                                                 OpenVINO INT8 (NNCF), AP and speed compared

`model` writes (each with the checkpoint's infer_cfg.yml, train_config.yml and metrics.yml):
    DIR/        model.json + model.pdiparams: a Paddle 3 (PIR) program, as PaddleDetection's
                exports with Paddle 3, read by the paddle engine (CPU, GPU, TensorRT)
    DIR_ov/     model.xml + model.bin, OpenVINO IR with float32 weights
    DIR_onnx/   model.onnx (paddle2onnx), for onnxruntime; skipped with a message where
                paddle2onnx is missing or cannot convert the network
Each exported network runs on the same probe batch as the checkpoint's network and must agree
within trainers.common.export.TOLERANCE, or the export fails.

OpenVINO and paddle2onnx read no PIR program: they convert from a legacy program of the same
network (model.pdmodel), which `paddle.jit.save` writes only in a process whose paddle was
imported with FLAGS_enable_pir_api=0, so a child process saves it (trainers/export/legacy.py).
"""
