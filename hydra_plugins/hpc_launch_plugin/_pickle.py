"""cloudpickle, plus modules of a ``ModuleType`` subclass by reference.

cloudpickle pickles a module by reference only when its type is exactly
``types.ModuleType``. Some packages register module subclasses in ``sys.modules``
(``torch.classes`` is a ``torch._classes._Classes``), and a task function defined in
``__main__`` that uses an attribute of the same name (``cfg.data.classes`` next to
``import torch``) pulls such a module into its globals: plain cloudpickle then fails
with "cannot pickle '_Classes' object". Here every module that ``sys.modules`` holds
under its name travels as that name and is imported again on the other side.
"""

from __future__ import annotations

import importlib
import io
import sys
import types
from typing import Any

import cloudpickle


class _Pickler(cloudpickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.ModuleType) and type(obj) is not types.ModuleType:
            name = getattr(obj, "__name__", None)
            if isinstance(name, str) and sys.modules.get(name) is obj:
                return importlib.import_module, (name,)
        return super().reducer_override(obj)


def dumps(obj: Any) -> bytes:
    with io.BytesIO() as buffer:
        _Pickler(buffer, protocol=cloudpickle.DEFAULT_PROTOCOL).dump(obj)
        return buffer.getvalue()
