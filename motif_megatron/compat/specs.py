"""Megatron-Core's layer specs across releases: 0.16 describes the MLP as a ``ModuleSpec``, 0.17
and later as a ``functools.partial`` of ``MLP.as_mlp_submodule``; both carry the submodules
(the linears) that the MSG masks and LoRA replace."""

from __future__ import annotations

import functools


def submodules(spec):
    """The ``submodules`` of a ``ModuleSpec``, or the ``submodules`` keyword of a partial."""
    if isinstance(spec, functools.partial):
        return spec.keywords["submodules"]
    return spec.submodules
