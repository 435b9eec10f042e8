"""Counts what makes the host wait for the device, on any device (CPU included, where nothing actually waits).

A CUDA host sync happens where a value is read back (``.item()``, ``bool(t)``, ``torch.equal``, ``.tolist()``) or an
op's output size depends on the data (``nonzero``, boolean indexing, ``unique``). ``HostWaits`` records every such
call inside its context: dispatcher ops through a TorchDispatchMode (re-entered inside custom ops, whose bodies run
below the mode), ``Tensor.tolist`` (which reads CPU data without dispatching an op) through a patch. On a GPU, CUDA's
sync debug mode checks the same from the driver's side (tests/test_quietstar.py).
"""
from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

WAITING_OPS = {"aten::_local_scalar_dense", "aten::is_nonzero", "aten::equal", "aten::nonzero",
               "aten::masked_select", "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive"}


def _is_boolean_index(name: str, args: tuple) -> bool:
    indices = args[1] if len(args) > 1 and name.startswith("aten::index") else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


class _WaitingOps(TorchDispatchMode):
    def __init__(self, ops: list[str]):
        super().__init__()
        self.ops = ops

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name in WAITING_OPS or _is_boolean_index(name, args):
            self.ops.append(name)
        if func.namespace in ("aten", "prims"):
            return func(*args, **(kwargs or {}))
        # A custom op's body runs with this mode off: run it below the Python key with the mode pushed again.
        below_python = torch._C._dispatch_keyset_full_after(torch._C.DispatchKey.Python)
        tensors = [x for x in (*args, *(kwargs or {}).values()) if isinstance(x, torch.Tensor)]
        keys = below_python & torch._C._dispatch_keys(tensors[0]) if tensors else below_python
        with _WaitingOps(self.ops):
            return func.redispatch(keys, *args, **(kwargs or {}))


class HostWaits(contextlib.AbstractContextManager):
    """``ops``: the name of every host-waiting call made inside the context, in order."""

    def __init__(self):
        self.ops: list[str] = []
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "HostWaits":
        tolist, ops = torch.Tensor.tolist, self.ops

        def counted_tolist(tensor, *args, **kwargs):
            ops.append("Tensor.tolist")
            return tolist(tensor, *args, **kwargs)

        torch.Tensor.tolist = counted_tolist
        self._stack.callback(setattr, torch.Tensor, "tolist", tolist)
        self._stack.enter_context(_WaitingOps(self.ops))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()
