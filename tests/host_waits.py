"""Counts what makes the host wait for the device, and the kernel launches, on any device (CPU included).

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
from torch.utils._pytree import tree_leaves

WAITING_OPS = {"aten::_local_scalar_dense", "aten::is_nonzero", "aten::equal", "aten::nonzero",
               "aten::masked_select", "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive"}


def _is_boolean_index(name: str, args: tuple) -> bool:
    indices = args[1] if len(args) > 1 and name.startswith("aten::index") else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


class _Recorder(TorchDispatchMode):
    """Calls ``record(func, args, kwargs, out)`` for every op dispatched inside it, custom ops' bodies included."""

    def __init__(self, record):
        super().__init__()
        self.record = record

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace in ("aten", "prims"):
            out = func(*args, **kwargs)
        else:
            # A custom op's body runs with this mode off: run it below the Python key with the mode pushed again.
            below_python = torch._C._dispatch_keyset_full_after(torch._C.DispatchKey.Python)
            tensors = [x for x in (*args, *kwargs.values()) if isinstance(x, torch.Tensor)]
            keys = below_python & torch._C._dispatch_keys(tensors[0]) if tensors else below_python
            with _Recorder(self.record):
                out = func.redispatch(keys, *args, **kwargs)
        self.record(func, args, kwargs, out)
        return out


def _storages(tree) -> set[int]:
    return {x.untyped_storage().data_ptr() for x in tree_leaves(tree) if isinstance(x, torch.Tensor) and x.numel()}


class KernelLaunches(contextlib.AbstractContextManager):
    """``ops``: every op inside the context that writes memory, a kernel launch on a GPU: an in-place op, or one
    whose output is new memory (a copy made by ``.to``/``.contiguous`` counts, the same call returning its input
    does not, nor does a view, an ``empty`` or a CPU-side scalar)."""

    FREE = {"aten::empty", "aten::empty_like", "aten::new_empty", "aten::empty_strided", "aten::lift_fresh",
            "aten::_local_scalar_dense"}

    def __init__(self):
        self.ops: list[str] = []
        self._recorder = _Recorder(self._record)

    def _record(self, func, args, kwargs, out) -> None:
        name = func._schema.name
        if func.namespace not in ("aten", "prims") or name in self.FREE:
            return
        if func._schema.is_mutable or _storages(out) - _storages((args, kwargs)):
            self.ops.append(name)

    def __enter__(self) -> "KernelLaunches":
        self._recorder.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._recorder.__exit__(*exc)


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
        self._stack.enter_context(_Recorder(self._record))
        return self

    def _record(self, func, args, kwargs, out) -> None:
        name = func._schema.name
        if name in WAITING_OPS or _is_boolean_index(name, args):
            self.ops.append(name)

    def __exit__(self, *exc) -> None:
        self._stack.close()
