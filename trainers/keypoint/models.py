"""The trainable top-down heatmap networks: image (N, 3, H, W) -> heatmaps (N, K, H/4, W/4).

- simple_baseline: Xiao et al., "Simple Baselines for Human Pose Estimation" (2018): a
  backbone from paddle.vision.models at 1/32, three 4x4 stride-2 deconvolutions (+ batch norm,
  ReLU) back to 1/4, and a 1x1 conv to K heatmaps. ResNet-18 with 256-channel deconvolutions is
  the paper's smallest; mobilenet_v2 with fewer channels is a variant small enough to train on
  a laptop CPU. No ImageNet weights are loaded (none can be downloaded here): from scratch it
  needs far more data and steps than a fine-tune.
- tinypose: PP-TinyPose (trainers.keypoint.tinypose_net), whose trained weights can be
  imported from the OpenVINO IR export (trainers.keypoint.import_ir).
- hrnet: HRNet-W32 (trainers.keypoint.hrnet), PaddleDetection's most accurate top-down
  network; `hrnet_width` sets the branch width (32: the paper's W32).

`build_network` is the one entry point, also used by the exporter (trainers.export) to rebuild
a network from a checkpoint's recorded arguments.
"""

from __future__ import annotations

from paddle import nn

from trainers.keypoint.config import OUTPUT_STRIDE

DECONV_LAYERS = 3  # 1/32 -> 1/4
_BACKBONE_CHANNELS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}


class SimpleBaseline(nn.Layer):
    def __init__(self, backbone: str, backbone_scale: float, deconv_channels: int, num_joints: int):
        super().__init__()
        from paddle.vision import models

        if backbone == "mobilenet_v2":
            self.backbone = models.MobileNetV2(scale=backbone_scale, num_classes=0, with_pool=False)
            channels = int(1280 * max(backbone_scale, 1.0))  # MobileNetV2's last conv
        else:
            self.backbone = getattr(models, backbone)(num_classes=0, with_pool=False)
            channels = _BACKBONE_CHANNELS[backbone]
        layers = []
        for _ in range(DECONV_LAYERS):
            deconv = nn.Conv2DTranspose(channels, deconv_channels, 4, stride=2, padding=1, bias_attr=False,
                                        weight_attr=nn.initializer.Normal(std=0.001))
            layers += [deconv, nn.BatchNorm2D(deconv_channels), nn.ReLU()]
            channels = deconv_channels
        self.deconv = nn.Sequential(*layers)
        self.final_conv = nn.Conv2D(channels, num_joints, 1, weight_attr=nn.initializer.Normal(std=0.001),
                                    bias_attr=nn.initializer.Constant(0.0))

    def forward(self, image):
        """image (N, 3, H, W) float32 -> heatmaps (N, K, H/4, W/4)."""
        return self.final_conv(self.deconv(self.backbone(image)))


def build_network(arch: str, input_size: list[int], num_joints: int, backbone: str = "resnet18",
                  backbone_scale: float = 1.0, deconv_channels: int = 256, hrnet_width: int = 32) -> nn.Layer:
    """An untrained network for crops of input_size [width, height] and num_joints heatmaps."""
    width, height = input_size
    if arch == "tinypose":
        from trainers.keypoint.tinypose_net import build_tinypose
        return build_tinypose((height, width), num_joints)
    if arch == "simple_baseline":
        return SimpleBaseline(backbone, backbone_scale, deconv_channels, num_joints)
    if arch == "hrnet":
        from trainers.keypoint.hrnet import build_hrnet
        return build_hrnet(hrnet_width, num_joints)
    raise ValueError(f"unknown keypoint network arch {arch!r}; known: simple_baseline, tinypose, hrnet")


def heatmap_shape(input_size: tuple[int, int], num_joints: int) -> tuple[int, int, int]:
    """(K, h, w) of the heatmaps for input_size (width, height)."""
    return num_joints, input_size[1] // OUTPUT_STRIDE, input_size[0] // OUTPUT_STRIDE
