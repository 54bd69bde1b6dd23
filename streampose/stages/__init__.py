"""Every stage type a graph can name, mapped to the class that implements it.

Derived from the declarations in streampose.graph.schema: each stage type's parameter class
names its implementation (`IMPLEMENTATION = "package.module:Class"`). Model-running stages load
their engines in `__init__`, so importing this module stays cheap.
"""

import importlib

from streampose.graph import schema


def _implementation(params: type[schema.StageBase]) -> type:
    module, _, name = params.IMPLEMENTATION.partition(":")
    return getattr(importlib.import_module(module), name)


STAGE_CLASSES = {type_name: _implementation(params) for type_name, params in schema.STAGE_TYPES.items()}
