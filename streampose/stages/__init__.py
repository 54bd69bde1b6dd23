"""Every stage type a graph can name, mapped to the class that implements it.

Derived from the declarations in streampose.graph.schema: each stage type's parameter class
names its implementation (`IMPLEMENTATION = "package.module:Class"`). Model-running stages load
their engines in `__init__`, so importing this module stays cheap.
"""

from streampose.graph import schema
from streampose.runtime.stage import stage_class

STAGE_CLASSES = {type_name: stage_class(params) for type_name, params in schema.STAGE_TYPES.items()}
