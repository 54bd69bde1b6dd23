# Quick start: `make demo` runs the pose demo on a shared video; `make test` runs the tests.
# Both set up .venv themselves. SHARED points at the folder holding models/ and media/.

SHARED ?= $(abspath ../shared)
VENV ?= .venv
# The interpreter uv.lock is resolved for (CPython 3.11).
PYTHON ?= python3.11
PY := $(VENV)/bin/python
export STREAMPOSE_MODELS ?= $(SHARED)/models
export STREAMPOSE_SHARED := $(SHARED)
# The demo graph's two videos (graphs/demo.yml), from SHARED unless set.
export STREAMPOSE_DEMO_FALL ?= $(SHARED)/media/video/fall_faint_studio_1280x720.mp4
export STREAMPOSE_DEMO_EXERCISE ?= $(SHARED)/media/video/squat_side_view.mp4

# Debian packages the tests start: an RTSP server (gst-rtsp-server via the system python3), an MQTT
# broker and a headless browser for the live view. Locked like the Python ones: debian-packages.lock
# holds them and every package their install brought in (Debian 12, amd64), at the versions the
# tests passed on, and `make test` installs exactly those; `make lock-debian` moves it to the
# archive's current versions.
TEST_PACKAGES := gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-base \
	gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav \
	mosquitto chromium chromium-driver
DEBIAN_LOCK := debian-packages.lock
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q
INSTALLED_AS_LOCKED := dpkg-query -W -f '$${Package}=$${Version}\n' $$(cut -d= -f1 $(DEBIAN_LOCK)) 2>/dev/null \
	| LC_ALL=C sort | cmp -s - $(DEBIAN_LOCK)

.PHONY: demo test test-deps bench docs lifter lock lock-debian clean

# Installs come from uv.lock (exact versions and hashes), never from pyproject.toml's ranges.
# pip installs, hash-checked, pip and uv themselves (requirements-tools.txt) and what `pip install -e .` builds
# with (requirements-build.txt); `uv sync --locked` then installs the daemon's dependencies, and
# for the tests the test extra, exactly as locked, and stops if uv.lock no longer matches
# pyproject.toml. requirements-demo.txt is the daemon's part of the lock in pip's format, for
# the Dockerfile and machines with pip alone. `make lock` re-resolves and re-exports; a lock
# change lands only with `make test` passing on it.
PIP_INSTALL := $(PY) -m pip install -q --disable-pip-version-check
UV := UV_PROJECT_ENVIRONMENT=$(abspath $(VENV)) $(VENV)/bin/uv
# --inexact keeps what pip installed (pip, uv, the build tools, streampose itself, editable).
UV_SYNC := $(UV) sync --quiet --locked --inexact --no-install-project
UV_EXPORT := $(UV) export --quiet --frozen --no-emit-project

$(VENV)/.installed: requirements-tools.txt requirements-build.txt uv.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --require-hashes -r requirements-tools.txt -r requirements-build.txt
	$(UV_SYNC)
	$(PIP_INSTALL) --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(UV_SYNC) --extra test
	touch $@

lock: $(VENV)/.installed
	$(UV) lock --upgrade
	$(UV_EXPORT) --only-group tools -o requirements-tools.txt
	$(UV_EXPORT) --only-group build -o requirements-build.txt
	$(UV_EXPORT) -o requirements-demo.txt

demo: $(VENV)/.installed
	$(PY) run_pipeline.py graphs/demo.yml

test-deps:
	@$(INSTALLED_AS_LOCKED) || { \
		echo "installing the test servers' Debian packages at their locked versions ($(DEBIAN_LOCK))"; \
		$(SUDO) apt-get update -q && $(APT_INSTALL) --no-install-recommends $$(cat $(DEBIAN_LOCK)) || { \
		echo "$(DEBIAN_LOCK): a locked version is not in this machine's Debian archive (a newer one replaced" \
		"it, or this is not Debian 12 amd64): run 'make lock-debian', then make test on the new lock" >&2; exit 1; }; }

# Installs the archive's current versions of the test packages, then writes what is installed as the lock.
lock-debian:
	$(SUDO) apt-get update -q && $(APT_INSTALL) $(TEST_PACKAGES) $$(cut -d= -f1 $(DEBIAN_LOCK))
	dpkg-query -W -f '$${Package}=$${Version}\n' $(TEST_PACKAGES) $$(cut -d= -f1 $(DEBIAN_LOCK)) \
		| LC_ALL=C sort -u > $(DEBIAN_LOCK)

test: $(VENV)/.installed-test test-deps
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
