"""Run a project script (``device_audit.py SCRIPT ARGS...``, under torchrun or not) with its device
placement audited; it exits non-zero at the first tensor that bypassed the device.

On this CPU machine the device *is* the CPU, so comparing ``tensor.device`` cannot fail. The audit
therefore marks everything that goes through the one device helper (``motif_megatron.device``)
with a tensor subclass, which torch carries through every op derived from it, and checks:

- every model the library builds went through ``module_to_device``;
- every tensor a ``GPTModel`` forward receives (token ids, positions, labels, masks, THD
  ``cu_seqlens``) is marked;
- every tensor that library code (a ``motif_megatron`` frame) hands to a ``torch.distributed``
  collective is marked.

A tensor made on the host and never moved (which NCCL would reject on a GPU) fails here.
"""

import runpy
import sys

import torch
import torch.distributed as dist

from motif_megatron import device


class OnDevice(torch.Tensor):
    """A tensor that went through ``device.to_device`` (or was computed from one)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        # torch's default wraps results with as_subclass, an autograd view that Megatron's
        # custom Functions (which edit their outputs in place) refuse; retag them instead
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **(kwargs or {}))
        return out if func in _NOWRAP else _mark(out)


OnDevice.__module__ = "device_audit"  # picklable while the audited script runs as __main__
sys.modules["device_audit"] = sys.modules[__name__]
_to_device, _module_to_device = device.to_device, device.module_to_device
_placed: set[int] = set()
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


def _marked_to_device(tensor):
    return _to_device(tensor).as_subclass(OnDevice)


_NOWRAP = torch.overrides.get_default_nowrap_functions()


def _mark(value):
    if isinstance(value, (tuple, list)):
        return type(value)(_mark(v) for v in value)
    if type(value) is torch.Tensor:  # retagged in place: a view would upset autograd
        value.__class__ = OnDevice
    return value


_function_apply = torch.autograd.Function.apply.__func__


def _marking_apply(cls, *args, **kwargs):
    """Ops carry the mark by themselves; an autograd Function whose forward allocates its output
    (Megatron's TP gathers) is given it when one of its inputs had it."""
    out = _function_apply(cls, *args, **kwargs)
    return _mark(out) if any(isinstance(a, OnDevice) for a in args) else out


def _recorded_module_to_device(module):
    _placed.add(id(module))
    return _module_to_device(module)


def _fail(what: str, where: str) -> None:
    raise AssertionError(f"device audit: {what} did not go through motif_megatron.device ({where})")


def _audited(name: str, collective):
    def wrapper(*args, **kwargs):
        frame = sys._getframe(1)
        if frame.f_globals.get("__name__", "").startswith("motif_megatron"):
            tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            tensors += [t for a in args if isinstance(a, list) for t in a]
            for t in tensors:
                if isinstance(t, torch.Tensor) and not isinstance(t, OnDevice):
                    where = f"{frame.f_code.co_filename}:{frame.f_lineno}"
                    _fail(f"a tensor handed to dist.{name}", where)
        return collective(*args, **kwargs)

    return wrapper


def _audited_forward(forward):
    def wrapper(self, *args, **kwargs):
        if id(self) not in _placed:
            _fail("a GPTModel", "built without module_to_device")
        params = kwargs.get("packed_seq_params")
        inputs = [*args, *kwargs.values()]
        if params is not None:
            inputs += [params.cu_seqlens_q, params.cu_seqlens_kv]
        for i, t in enumerate(inputs):
            if isinstance(t, torch.Tensor) and not isinstance(t, OnDevice):
                _fail(f"GPTModel input {i} ({tuple(t.shape)})", "forward")
        return forward(self, *args, **kwargs)

    return wrapper


def install() -> None:
    from megatron.core.models.gpt import GPTModel

    device.to_device = _marked_to_device
    torch.autograd.Function.apply = classmethod(_marking_apply)
    device.module_to_device = _recorded_module_to_device
    for name in COLLECTIVES:
        setattr(dist, name, _audited(name, getattr(dist, name)))
    GPTModel.forward = _audited_forward(GPTModel.forward)


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
