"""Model folders, infer_cfg.yml, the search path, the zoo, pull, convert and the `models` commands."""

import argparse
import functools
import hashlib
import http.server
import logging
import shutil
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import MODELS
from streampose.engines import load_engine
from streampose.models.cli import add_models_parser
from streampose.models.convert import ConvertError, convert
from streampose.models.folder import (BUILTIN_MODELS, ModelFolderError, ModelNotFoundError, default_search_path, find_model,
                                      load_model_folder)
from streampose.models.infer_cfg import InferConfigError, load_infer_cfg
from streampose.models.pull import PullError, pull

PICODET = MODELS / "picodet_s_192_pedestrian"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("STREAMPOSE_MODELS", raising=False)
    monkeypatch.delenv("STREAMPOSE_ZOO", raising=False)
    monkeypatch.chdir(tmp_path)


def copy_model(name: str, dest: Path) -> Path:
    target = dest / name
    shutil.copytree(MODELS / name, target)
    target.chmod(0o755)
    for file in target.iterdir():
        file.chmod(0o644)
    return target


# ---------------------------------------------------------------- search path

def test_search_path_order(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMPOSE_MODELS", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    assert default_search_path([tmp_path / "x"]) == [
        tmp_path / "x", tmp_path / "a", tmp_path / "b", tmp_path / "models", tmp_path / "cache/streampose/models",
        BUILTIN_MODELS]


def test_find_model_by_name_path_and_env(tmp_path, monkeypatch):
    folder = find_model("tinypose_128x96_ov", default_search_path([MODELS]))
    assert (folder.name, folder.format, folder.config.arch) == ("tinypose_128x96_ov", "openvino", "HRNet")
    assert folder.network == MODELS / "tinypose_128x96_ov/model.xml"
    assert folder.config.input_size == (128, 96)

    monkeypatch.setenv("STREAMPOSE_MODELS", str(MODELS))
    assert find_model("picodet_s_192_pedestrian", default_search_path()).format == "paddle"
    assert find_model(str(PICODET), []).weights == PICODET / "model.pdiparams"

    # the first folder on the path wins: --models before $STREAMPOSE_MODELS
    local = copy_model("picodet_s_192_lcnet_pedestrian_ov", tmp_path / "mine")
    assert find_model(local.name, default_search_path()).path == MODELS / local.name
    assert find_model(local.name, default_search_path([tmp_path / "mine"])).path == local


def test_missing_model_lists_every_searched_path(tmp_path):
    search = default_search_path([tmp_path / "mine"])
    with pytest.raises(ModelNotFoundError) as err:
        find_model("tinypose_128x96", search)
    message = str(err.value)
    for folder in search:
        assert str(folder / "tinypose_128x96") in message
    assert "streampose models pull tinypose_128x96" in message

    with pytest.raises(ModelNotFoundError, match="(?s)model 'no_such_model' not found.*can download: picodet"):
        find_model("no_such_model", search)


def test_folder_without_network_or_weights(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match="empty: no network file; a model folder holds one of: model.xml"):
        load_model_folder(tmp_path / "empty")
    folder = copy_model("picodet_s_192_pedestrian", tmp_path)
    (folder / "model.pdiparams").unlink()
    with pytest.raises(ModelFolderError, match="model.pdmodel needs its weights file model.pdiparams"):
        load_model_folder(folder)


# ---------------------------------------------------------------- infer_cfg.yml

def test_shared_configs_load():
    picodet = load_infer_cfg(PICODET / "infer_cfg.yml")
    assert picodet.arch == "PicoDet" and picodet.task == "detector"
    assert [op.type for op in picodet.preprocess] == ["Resize", "NormalizeImage", "Permute", "PadStride"]
    assert picodet.op("Resize").params["target_size"] == [192, 192]
    assert picodet.nms["nms_threshold"] == 0.5 and picodet.fpn_stride == (8, 16, 32, 64)
    assert picodet.input_size == (192, 192) and picodet.channel_order == "RGB"
    tinypose = load_infer_cfg(MODELS / "tinypose_256x192_ov/infer_cfg.yml")
    assert tinypose.task == "keypoints" and tinypose.input_size == (256, 192)


def broken(tmp_path, text: str) -> Path:
    path = tmp_path / "infer_cfg.yml"
    path.write_text(text)
    return path


def test_corrupt_yaml_names_the_file(tmp_path):
    path = broken(tmp_path, PICODET.joinpath("infer_cfg.yml").read_text()[:300] + "\n  - [unclosed\n")
    with pytest.raises(InferConfigError, match=rf"{path}: not valid YAML"):
        load_infer_cfg(path)
    with pytest.raises(InferConfigError, match="expected a mapping"):
        load_infer_cfg(broken(tmp_path, "- just\n- a list\n"))
    with pytest.raises(InferConfigError, match="no such file"):
        load_infer_cfg(tmp_path / "missing.yml")


@pytest.mark.parametrize("change, message", [
    (lambda c: c["Preprocess"].insert(1, {"type": "RandomFlip"}),
     r"key 'Preprocess\[1\]\.type': unknown pre-processing op 'RandomFlip'; known: LetterBoxResize"),
    (lambda c: c.update(arch="MaskRCNN"), r"key 'arch': unsupported architecture 'MaskRCNN'; supported: FairMOT, GFL"),
    (lambda c: c.pop("label_list"), r"key 'label_list': missing"),
    (lambda c: c["Preprocess"][0].update(target_size=[192]),
     r"key 'Preprocess\[0\]\.target_size': expected \[height, width\], positive integers, got \[192\]"),
    (lambda c: c["Preprocess"][1].update(std=[0.2, 0, 0.2]), r"'Preprocess\[1\]\.std': expected 3 non-zero"),
    (lambda c: c["Preprocess"][2].update(axis=1), r"'Preprocess\[2\]\.axis': not a parameter of Permute"),
    (lambda c: c["Preprocess"][0].pop("target_size"), r"'Preprocess\[0\]\.target_size': Resize needs it"),
    (lambda c: c["NMS"].update(nms_threshold="high"), r"'NMS\.nms_threshold': expected a number in \[0, 1\]"),
    (lambda c: c.update(fpn_stride=[8, -16]), r"'fpn_stride': expected a list of positive integers"),
    (lambda c: c.update(channel_order="BRG"), r"'channel_order': expected RGB or BGR"),
])
def test_invalid_config_names_file_and_key(tmp_path, change, message):
    config = yaml.safe_load(PICODET.joinpath("infer_cfg.yml").read_text())
    change(config)
    path = broken(tmp_path, yaml.safe_dump(config))
    with pytest.raises(InferConfigError, match=rf"^{path}: .*{message}"):
        load_infer_cfg(path)


def test_broken_config_in_a_model_folder_fails_find_model(tmp_path):
    folder = copy_model("picodet_s_192_pedestrian", tmp_path)
    (folder / "infer_cfg.yml").write_text("arch: PicoDet\nPreprocess: [{type: Resize}]\nlabel_list: [person]\n")
    with pytest.raises(InferConfigError, match=r"infer_cfg.yml: key 'Preprocess\[0\]\.target_size'"):
        find_model(folder.name, [tmp_path])


def test_labels_follow_the_network(caplog):
    config = load_infer_cfg(PICODET / "infer_cfg.yml")
    assert len(config.label_list) == 80
    with caplog.at_level(logging.WARNING):
        assert config.labels_for(1) == ("person",)
    assert "lists 80 labels but the network has 1 class(es)" in caplog.text
    assert config.labels_for(82)[-2:] == ("class_80", "class_81")


def test_yolox_without_infer_cfg_uses_the_zoo_config(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        folder = find_model("yolox_nano_coco_onnx", [MODELS])
    assert "has no infer_cfg.yml; using the model zoo's built-in config" in caplog.text
    config = folder.config
    assert (folder.format, config.arch, config.channel_order, config.input_size) == ("onnx", "YOLOX", "BGR", (416, 416))
    assert config.op("Pad").params["fill_value"] == [114, 114, 114]
    assert config.op("NormalizeImage") is None and len(config.label_list) == 80

    unknown = tmp_path / "my_detector"
    unknown.mkdir()
    shutil.copy(MODELS / "yolox_nano_coco_onnx/model.onnx", unknown / "model.onnx")
    with pytest.raises(ModelFolderError, match="my_detector: no infer_cfg.yml; write one"):
        load_model_folder(unknown)


# ---------------------------------------------------------------- pull

class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class Server:
    """A real HTTP server on 127.0.0.1 serving a folder."""

    def __init__(self, root: Path):
        handler = functools.partial(QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    srv = Server(root)
    yield srv, root
    srv.httpd.shutdown()
    srv.httpd.server_close()


def write_zoo(tmp_path, monkeypatch, entries: dict) -> None:
    path = tmp_path / "zoo.yml"
    path.write_text(yaml.safe_dump({"models": entries}))
    monkeypatch.setenv("STREAMPOSE_ZOO", str(path))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pull_tar_and_zip_archives(tmp_path, monkeypatch, server, capsys):
    srv, root = server
    with tarfile.open(root / "picodet.tar.gz", "w:gz") as archive:
        archive.add(PICODET, arcname="picodet_s_192_pedestrian")
    with zipfile.ZipFile(root / "tinypose.zip", "w") as archive:
        for file in (MODELS / "tinypose_128x96_ov").iterdir():
            archive.write(file, f"release/tinypose_128x96/{file.name}")
    write_zoo(tmp_path, monkeypatch, {
        "picodet_s_192_pedestrian": {"url": f"{srv.url}/picodet.tar.gz", "sha256": sha256(root / "picodet.tar.gz")},
        "tinypose_128x96": {"url": f"{srv.url}/tinypose.zip", "sha256": sha256(root / "tinypose.zip")},
    })
    picodet = pull("picodet_s_192_pedestrian", progress=True)
    assert picodet.path == tmp_path / "cache/streampose/models/picodet_s_192_pedestrian"
    size_mb = (root / "picodet.tar.gz").stat().st_size / 1e6
    assert f"100% {size_mb:.1f}/{size_mb:.1f} MB" in capsys.readouterr().err
    assert (picodet.path / "model.pdiparams").read_bytes() == (PICODET / "model.pdiparams").read_bytes()
    tinypose = pull("tinypose_128x96", tmp_path / "dest", progress=False)
    assert (tinypose.format, tinypose.config.arch) == ("openvino", "HRNet")
    # pulled models are found by name on the default search path
    assert find_model("picodet_s_192_pedestrian", default_search_path()).path == picodet.path
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["tinypose_128x96"]


def test_pull_bare_network_writes_the_zoo_config(tmp_path, monkeypatch, server, caplog):
    srv, root = server
    shutil.copy(MODELS / "yolox_nano_coco_onnx/model.onnx", root / "yolox_nano.onnx")
    zoo = yaml.safe_load((Path(__file__).parents[1] / "streampose/models/zoo.yml").read_text())["models"]
    entry = dict(zoo["yolox_nano_coco_onnx"], url=f"{srv.url}/yolox_nano.onnx", sha256=None)
    write_zoo(tmp_path, monkeypatch, {"yolox_nano_coco_onnx": entry})
    with caplog.at_level(logging.WARNING):
        folder = pull("yolox_nano_coco_onnx", progress=False)
    assert "lists no sha256, so the download is not verified" in caplog.text
    assert (folder.path / "infer_cfg.yml").is_file() and folder.config.channel_order == "BGR"
    assert folder.config.source.endswith("infer_cfg.yml")


def test_pull_sha_mismatch_installs_nothing(tmp_path, monkeypatch, server):
    srv, root = server
    with tarfile.open(root / "picodet.tar", "w") as archive:
        archive.add(PICODET, arcname="picodet_s_192_pedestrian")
    write_zoo(tmp_path, monkeypatch, {"picodet_s_192_pedestrian": {"url": f"{srv.url}/picodet.tar", "sha256": "0" * 64}})
    dest = tmp_path / "dest"
    with pytest.raises(PullError, match=rf"sha256 mismatch for {srv.url}/picodet.tar: expected 0{{64}}, got "
                                        rf"{sha256(root / 'picodet.tar')}; nothing was installed"):
        pull("picodet_s_192_pedestrian", dest, progress=False)
    assert list(dest.iterdir()) == []


def test_pull_errors(tmp_path, monkeypatch, server):
    srv, root = server
    (root / "notes.tar").write_bytes(b"not an archive at all")
    with tarfile.open(root / "two.tar", "w") as archive:
        archive.add(PICODET, arcname="a")
        archive.add(MODELS / "tinypose_128x96_ov", arcname="b")
    write_zoo(tmp_path, monkeypatch, {
        "garbage": {"url": f"{srv.url}/notes.tar", "sha256": None},
        "two": {"url": f"{srv.url}/two.tar", "sha256": None},
        "gone": {"url": f"{srv.url}/gone.tar", "sha256": None},
    })
    dest = tmp_path / "dest"
    with pytest.raises(PullError, match="is neither a tar nor a zip archive"):
        pull("garbage", dest, progress=False)
    with pytest.raises(PullError, match=r"expected one model folder in .*two.tar, found 2: \['a', 'b'\]"):
        pull("two", dest, progress=False)
    with pytest.raises(PullError, match=r"gone: cannot download .*gone.tar: HTTP Error 404"):
        pull("gone", dest, progress=False)
    with pytest.raises(Exception, match="'nope' is not in the model zoo .*known: garbage, gone, two"):
        pull("nope", dest, progress=False)
    assert list(dest.iterdir()) == []


# ---------------------------------------------------------------- convert

def test_convert_paddle_to_openvino_matches_the_source(tmp_path):
    source = find_model(str(PICODET), [])
    converted = convert(source, "openvino", tmp_path / "out")
    assert (converted.name, converted.format) == ("picodet_s_192_pedestrian_ov", "openvino")
    assert converted.config.raw == source.config.raw
    feed = {"image": np.random.default_rng(0).standard_normal((1, 3, 192, 192), np.float32)}
    expected = load_engine(source, engine="paddle", threads=2).run(feed)
    got = load_engine(converted, engine="openvino", precision="fp32", threads=2, cache_dir=tmp_path / "c").run(feed)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-4)
    with pytest.raises(ConvertError, match="already exists"):
        convert(source, "openvino", tmp_path / "out")


def test_convert_onnx_to_openvino_writes_the_builtin_config(tmp_path):
    converted = convert(find_model("yolox_nano_coco_onnx", [MODELS]), "openvino", tmp_path)
    assert converted.name == "yolox_nano_coco_ov"  # the source's format suffix is replaced
    assert converted.config.source == str(converted.path / "infer_cfg.yml")
    assert converted.config.channel_order == "BGR"


@pytest.mark.skipif(__import__("importlib").util.find_spec("paddle2onnx") is not None,
                    reason="paddle2onnx is installed")
def test_convert_to_onnx_without_paddle2onnx(tmp_path):
    with pytest.raises(ConvertError, match=r"needs paddle2onnx, which is not installed \(pip install paddle2onnx\)"):
        convert(find_model(str(PICODET), []), "onnx", tmp_path)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- commands

def run_cli(*argv) -> int:
    parser = argparse.ArgumentParser(prog="streampose")
    add_models_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_list_and_info(capsys):
    assert run_cli("models", "--models", str(MODELS), "list") == 0
    out = capsys.readouterr().out
    assert "picodet_s_192_pedestrian           paddle    PicoDet     detector   192x192" in out
    assert "tinypose_256x192_ov                openvino  HRNet       keypoints  192x256" in out
    assert "yolox_nano_coco_onnx               onnx      YOLOX       detector   416x416" in out
    assert f"lifter_coco17                      openvino  PoseLifter  lifter     dynamic    {BUILTIN_MODELS}" in out
    assert "downloadable with `streampose models pull NAME`" in out and "tinypose_128x96 " in out

    assert run_cli("models", "--models", str(MODELS), "info", "tinypose_128x96_ov", "--threads", "2",
                   "--runs", "3") == 0
    out = capsys.readouterr().out
    assert "image" in out and "[-1, 3, 128, 96]" in out and "conv2d_441.tmp_1" in out and "[-1, 17, 32, 24]" in out
    assert "TopDownEvalAffine" in out and "latency:    batch 1, 3 runs: median" in out


def test_cli_errors_exit_2(capsys):
    assert run_cli("models", "info", "no_such_model") == 2
    assert "error: model 'no_such_model' not found; searched:" in capsys.readouterr().err
    assert run_cli("models", "pull", "no_such_model") == 2
    assert "not in the model zoo" in capsys.readouterr().err
