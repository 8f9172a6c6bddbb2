"""Hooks on torch modules for one block of code: registered on entry, always removed on exit.

The fast engine, the function-vector analysis and the bench drive transformers modules with plain hooks (the
nnsight API stays in `interventions`); this is the one place that registers and removes them.
"""

from __future__ import annotations

import contextlib

__all__ = ["hooked", "stand_in"]


@contextlib.contextmanager
def hooked(pairs, pre: bool = False):
    """Within the block, `fn` hooks `module` for each (module, fn) of `pairs`: a forward hook, or a forward
    pre-hook if `pre`. Every hook is removed on exit, also on an error."""
    handles = []
    try:
        for module, fn in pairs:
            handles.append(module.register_forward_pre_hook(fn) if pre else module.register_forward_hook(fn))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def stand_in(layers, upto: int, module):
    """Within the block, entries 0..upto of the module list `layers` are `module`, then the originals come
    back. Not re-entrant on the same list: a nested call would restore the stand-in, so it is refused."""
    if any(getattr(layer, "_stands_in", False) for layer in layers):
        raise RuntimeError("these layers are already stood in for (engine.run_after is not re-entrant)")
    module._stands_in = True
    originals = list(layers[:upto + 1])
    for i in range(upto + 1):
        layers[i] = module
    try:
        yield
    finally:
        for i, original in enumerate(originals):
            layers[i] = original
