# Quick start: `make demo` runs the pose demo on a shared video; `make test` runs the tests.
# Both set up .venv themselves. SHARED points at the folder holding models/ and media/.

SHARED ?= $(abspath ../shared)
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
export STREAMPOSE_MODELS ?= $(SHARED)/models
export STREAMPOSE_SHARED := $(SHARED)
# The demo graph's two videos (graphs/demo.yml), from SHARED unless set.
export STREAMPOSE_DEMO_FALL ?= $(SHARED)/media/video/fall_faint_studio_1280x720.mp4
export STREAMPOSE_DEMO_EXERCISE ?= $(SHARED)/media/video/squat_side_view.mp4

# Debian packages for the RTSP server the tests start (gst-rtsp-server via the system python3).
RTSP_PACKAGES := gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-base \
	gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav

# Debian packages the output tests start: an MQTT broker, and a headless browser for the live view.
OUTPUT_TEST_PACKAGES := mosquitto chromium chromium-driver

.PHONY: demo test rtsp-deps output-test-deps bench docs lifter lock clean

# Installs come from uv.lock (exact versions and hashes), never from pyproject.toml's ranges.
# pip installs, hash-checked, uv itself (requirements-uv.txt) and what `pip install -e .` builds
# with (requirements-build.txt); `uv sync --locked` then installs the daemon's dependencies, and
# for the tests the test extra, exactly as locked, and stops if uv.lock no longer matches
# pyproject.toml. requirements-demo.txt is the daemon's part of the lock in pip's format, for
# the Dockerfile and machines with pip alone. `make lock` re-resolves and re-exports; a lock
# change lands only with `make test` passing on it.
PIP_INSTALL := $(PY) -m pip install -q --disable-pip-version-check
UV := UV_PROJECT_ENVIRONMENT=$(abspath $(VENV)) $(VENV)/bin/uv
# --inexact keeps what pip installed (uv, the build tools, streampose itself, editable).
UV_SYNC := $(UV) sync --quiet --locked --inexact --no-install-project
UV_EXPORT := $(UV) export --quiet --frozen --no-emit-project

$(VENV)/.installed: requirements-uv.txt requirements-build.txt uv.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --require-hashes -r requirements-uv.txt -r requirements-build.txt
	$(UV_SYNC)
	$(PIP_INSTALL) --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(UV_SYNC) --extra test
	touch $@

lock: $(VENV)/.installed
	$(UV) lock --upgrade
	$(UV_EXPORT) --only-group uv -o requirements-uv.txt
	$(UV_EXPORT) --only-group build -o requirements-build.txt
	$(UV_EXPORT) -o requirements-demo.txt

demo: $(VENV)/.installed
	$(PY) run_pipeline.py graphs/demo.yml

rtsp-deps:
	@dpkg -s $(RTSP_PACKAGES) >/dev/null 2>&1 || { \
		echo "installing RTSP test server packages"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $(RTSP_PACKAGES); }

output-test-deps:
	@dpkg -s $(OUTPUT_TEST_PACKAGES) >/dev/null 2>&1 || { \
		echo "installing the MQTT broker and headless browser the output tests use"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $(OUTPUT_TEST_PACKAGES); }

test: $(VENV)/.installed-test rtsp-deps output-test-deps
	$(VENV)/bin/pytest -q

bench: $(VENV)/.installed-test
	$(PY) benchmarks/runtime.py
	$(PY) benchmarks/models.py

# The default 3D lifter ships in the package (streampose/models/builtin/lifter_coco17, used by
# graphs/rtsp_fall.yml): `make lifter` trains it again from ../shared/mocap (~5 min on 2 cores) into
# build/lifter_coco17 (IR and Paddle 3) and ships its IR, float16 weights, in place.
lifter: $(VENV)/.installed-test
	$(PY) -m trainers.lifter.train --out build/lifter_coco17 --mocap $(SHARED)/mocap
	$(PY) -m trainers.lifter.ship build/lifter_coco17 streampose/models/builtin/lifter_coco17

docs: $(VENV)/.installed
	$(PY) -m streampose schema > docs/graphs-reference.md

clean:
	rm -rf out .pytest_cache
