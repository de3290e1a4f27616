"""Run a project script (``device_audit.py SCRIPT ARGS...``, under torchrun or not) with its device
placement audited; it exits non-zero at the first host tensor that meets a device tensor.

On this CPU machine the device *is* the CPU, so comparing ``tensor.device`` cannot fail. The audit
therefore keeps its own record of which memory is "on the device" and checks every operation
against it, as a GPU would:

- Memory is on the device when it was placed through the one device helper
  (``motif_megatron.device``: models, microbatches, collective buffers), allocated by a factory
  given an explicit device (Megatron's ``device=torch.cuda.current_device()``), moved with
  ``.cuda()`` / ``.to(device)``, or computed by an op from device memory. The record is kept per
  storage, so views, ``.data`` and gradients follow it; a ``TorchDispatchMode`` sees every aten op,
  backward included, and sets each output's record from its inputs.
- **Every op that mixes device memory with a host tensor of more than one element fails** with
  the op and the Python stack (a 0-dim host scalar is allowed, as CUDA allows it; ``copy_`` is the
  host-to-device copy itself). ``.cpu()`` gives host memory (a copy, as on a GPU).
- Every model the library builds went through ``module_to_device``; every tensor a ``GPTModel``
  forward receives (token ids, positions, labels, masks, THD ``cu_seqlens``) is on the device;
  every tensor library code hands to a ``torch.distributed`` collective is on the device.
"""

import runpy
import sys
import traceback

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from motif_megatron import device

_to_device, _module_to_device = device.to_device, device.module_to_device
DEVICE = torch.device("cpu", 0)  # what the device helper and compat's "cuda" mean under the audit
ON_DEVICE, EITHER = "device", "either"
_where = WeakIdKeyDictionary()  # storage -> ON_DEVICE | EITHER; absent: host
_placed: set[int] = set()
_factories: list[bool] = []  # per Python call Placement is in: made without tensor inputs
# (Placement is not active in backward: what is allocated there is taken to be either)
COLLECTIVES = (
    "all_reduce",
    "broadcast",
    "all_gather",
    "all_gather_into_tensor",
    "reduce_scatter_tensor",
    "reduce",
    "send",
    "recv",
)
_CROSS_DEVICE = {torch.ops.aten.copy_.default, torch.ops.aten._to_copy.default}


def _storage(t: torch.Tensor) -> torch.UntypedStorage | None:
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse, meta
        return None


def where(t: torch.Tensor) -> str | None:
    """ON_DEVICE, EITHER (allocated with some tensor's ``.device``: on a GPU that is the device
    or the host, which a CPU cannot tell) or None (the host)."""
    return _where.get(_storage(t))


def marked(t: torch.Tensor) -> bool:
    return where(t) == ON_DEVICE


def _set(value, state: str | None) -> None:
    for t in tree_flatten(value)[0]:
        if isinstance(t, torch.Tensor) and (storage := _storage(t)) is not None:
            if state:
                _where[storage] = state
            else:
                _where.pop(storage, None)


def _placement(dev) -> str | None:
    """Where an explicit ``device=`` / ``.to(dev)`` puts memory: the helper's device, the host
    for the literal ``"cpu"``, and either for a device read off a tensor."""
    if dev == "cpu":
        return None
    return ON_DEVICE if torch.device(dev) == DEVICE else EITHER


def _moved(src: torch.Tensor, out: torch.Tensor, state: str | None) -> torch.Tensor:
    """``out`` of a move of ``src``: a copy when the CPU gave back ``src`` itself but a GPU might
    have copied it (to or from the device), so that ``src`` stays where it was."""
    if out is src and where(src) != state:
        out = src.clone()
    _set(out, state)
    return out


def _fail(what: str) -> None:
    stack = [
        f
        for f in traceback.extract_stack()
        if "/torch/" not in f.filename and f.filename != __file__ and "<frozen" not in f.filename
    ]
    trace = "".join(traceback.format_list(stack[-12:]))
    raise AssertionError(f"device audit: {what}\n{trace}")


class Mixing(TorchDispatchMode):
    """Fails an op that mixes device and host memory; records where each output lives."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        states = [where(t) for t in tensors if t.numel() > 1] or [where(t) for t in tensors]
        host = [t for t in tensors if t.numel() > 1 and where(t) is None]
        if host and ON_DEVICE in states and func not in _CROSS_DEVICE:
            shapes = ", ".join(str(tuple(t.shape)) for t in host)
            inputs = ", ".join(f"{tuple(t.shape)} {where(t) or 'host'}" for t in tensors)
            _fail(f"{func} mixes device tensors with host tensors {shapes} (inputs: {inputs})")
        out = func(*args, **kwargs)
        if func._schema.name.endswith("_") and tensors:
            return out  # in place: the output stays where its target is
        if tensors:
            _set(out, ON_DEVICE if ON_DEVICE in states else None if None in states else EITHER)
        else:  # a factory: Placement decides where it sees the call
            _set(out, None if _factories and _factories[-1] else EITHER)
        return out


class Placement(TorchFunctionMode):
    """Explicit placements: a factory's ``device=``, ``.to(device)`` and ``.cpu()`` (``.cuda()`` is
    compat.cpu's identity, wrapped in :func:`install`)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        factory = not any(isinstance(t, torch.Tensor) for t in tree_flatten((args, kwargs))[0])
        _factories.append(factory)
        try:
            out = func(*args, **kwargs)
        finally:
            _factories.pop()
        name = getattr(func, "__name__", "")
        if name == "cpu":
            return _moved(args[0], out, None)
        dev = kwargs.get("device")
        if name == "to" and isinstance(args[1:2] and args[1], (torch.device, str, int)):
            dev = args[1]
        if dev is None:
            return out
        if name == "to":
            return _moved(args[0], out, _placement(dev))
        _set(out, _placement(dev))
        return out


def _marked_to_device(tensor):
    return _moved(tensor, _to_device(tensor), ON_DEVICE)


def _recorded_module_to_device(module):
    _placed.add(id(module))
    module = _module_to_device(module)
    _set([*module.parameters(), *module.buffers()], ON_DEVICE)
    return module


def _audited(name: str, collective):
    def wrapper(*args, **kwargs):
        frame = sys._getframe(1)
        if frame.f_globals.get("__name__", "").startswith("motif_megatron"):
            tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            tensors += [t for a in args if isinstance(a, list) for t in a]
            for t in tensors:
                if isinstance(t, torch.Tensor) and not marked(t):
                    _fail(f"a host tensor was handed to dist.{name}")
        return collective(*args, **kwargs)

    return wrapper


def _audited_forward(forward):
    def wrapper(self, *args, **kwargs):
        if id(self) not in _placed:
            _fail("a GPTModel was built without module_to_device")
        params = kwargs.get("packed_seq_params")
        inputs = [*args, *kwargs.values()]
        if params is not None:
            inputs += [params.cu_seqlens_q, params.cu_seqlens_kv]
        for i, t in enumerate(inputs):
            if isinstance(t, torch.Tensor) and not marked(t):
                _fail(f"GPTModel input {i} ({tuple(t.shape)}) is a host tensor")
        return forward(self, *args, **kwargs)

    return wrapper


def _marking_cuda(cuda):
    def wrapper(self, *args, **kwargs):
        return _moved(self, cuda(self, *args, **kwargs), ON_DEVICE)  # compat.cpu's identity

    return wrapper


def install() -> None:
    from megatron.core.models.gpt import GPTModel

    from motif_megatron.compat import cpu

    cpu.apply()
    cpu.device = lambda: DEVICE  # the helper's device, told apart from a tensor's "cpu"
    cpu._cpu = lambda dev: DEVICE if isinstance(dev, int) or "cuda" in str(dev) else dev
    proxy = sys.modules["megatron.core.parallel_state"].torch  # compat's torch for megatron.core
    proxy.cuda.current_device = lambda: DEVICE
    proxy.device = lambda kind="cpu", index=None: (
        DEVICE if str(kind).startswith("cuda") else torch.device(kind, index)
    )
    torch.Tensor.cuda = _marking_cuda(torch.Tensor.cuda)
    device.to_device = _marked_to_device
    device.module_to_device = _recorded_module_to_device
    for name in COLLECTIVES:
        setattr(dist, name, _audited(name, getattr(dist, name)))
    GPTModel.forward = _audited_forward(GPTModel.forward)
    Placement().__enter__()
    Mixing().__enter__()


if __name__ == "__main__":
    install()
    script, sys.argv = sys.argv[1], sys.argv[1:]
    sys.path.insert(0, str(__import__("pathlib").Path(script).resolve().parent))
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as done:
        if done.code not in (0, None):
            raise
    print("device audit: ok")
