# Quick start: `make demo` runs the pose demo on a shared video; `make test` runs the tests.
# Both set up .venv themselves. SHARED points at the folder holding models/ and media/.

SHARED ?= $(abspath ../shared)
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
export STREAMPOSE_MODELS ?= $(SHARED)/models
export STREAMPOSE_SHARED := $(SHARED)

# Debian packages for the RTSP server the tests start (gst-rtsp-server via the system python3).
RTSP_PACKAGES := gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-base \
	gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav

# Debian packages the output tests start: an MQTT broker, and a headless browser for the live view.
OUTPUT_TEST_PACKAGES := mosquitto chromium chromium-driver

.PHONY: demo test rtsp-deps output-test-deps bench docs lifter lock clean

# Installs come from the lock (exact versions and hashes), never from pyproject.toml's ranges:
# uv.lock is the resolution; requirements-demo.txt (runs the daemon), requirements.txt (adds the
# tests, training and export) and requirements-build.txt (what `pip install -e .` builds with)
# are its exports in pip's hash-checked format, so a fresh machine needs nothing but pip.
# `make lock` re-resolves and re-exports; a lock change lands only with `make test` passing on it.
PIP_INSTALL := $(PY) -m pip install -q --disable-pip-version-check
UV_VERSION := 0.13.9
UV_EXPORT := $(VENV)/bin/uv export --quiet --frozen --no-emit-project

$(VENV)/.installed: requirements-build.txt requirements-demo.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --require-hashes -r requirements-build.txt -r requirements-demo.txt
	$(PIP_INSTALL) --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements.txt
	$(PIP_INSTALL) --require-hashes -r requirements.txt
	touch $@

lock: $(VENV)/.installed
	$(PIP_INSTALL) uv==$(UV_VERSION)
	$(VENV)/bin/uv lock --upgrade
	$(UV_EXPORT) --extra test -o requirements.txt
	$(UV_EXPORT) -o requirements-demo.txt
	$(UV_EXPORT) --only-group build -o requirements-build.txt

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
