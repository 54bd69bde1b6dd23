#!/usr/bin/env python3
"""Run a graph: `python run_pipeline.py graphs/rtsp_fall.yml [--set KEY=VALUE ...]`.

The same as `streampose run`; see `python run_pipeline.py --help`.
"""

import sys

from streampose.cli import run_pipeline_main

if __name__ == "__main__":
    sys.exit(run_pipeline_main())
