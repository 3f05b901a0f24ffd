"""A faster training step than the eager loop (issue 33 item 3): the codec's transforms in
channels-last memory format and compiled by `torch.compile`, switched by `trainer.channels_last`
and `trainer.compile`.

Both act on the backbone's analysis and synthesis transforms (`TRANSFORMS`: g_a, h_a, h_s, g_s)
in training mode only, in place: `nn.Module.__call__` runs a module's `_compiled_call_impl`
when it is set, so state-dict keys keep their names (no `_orig_mod.` prefix: checkpoints load
with the switches on or off), and `Module.__getstate__` drops it, so a deep copy (the
evaluation's CPU copy) or a pickle is the plain module. In eval mode (validation, evaluation,
coding) a transform runs as before, without recompiling and with the same kernels, so the
entropy parameters the coder sees do not change.

channels_last: a transform's input is converted to NHWC strides and its output back to
contiguous; everything between the transforms (quantizers and their noise, entropy models, the
loss) sees the tensors it saw before, so the same seed draws the same noise and the losses agree
with the eager step up to the convolution kernels' rounding. compile: the transform is compiled;
inductor then chooses the convolutions' memory layout itself (channels-last on CPU), so the
conversions are left out of the compiled graph. Not compiled, by construction: the entropy models (CompressAI's
EntropyBottleneck quantiles, likelihoods and lower bounds, the Gaussian conditional), the
quantizers (lattice search), the context model, the regularizers and the loss; compiling the
whole walk measured no faster and took ~7x longer to warm up (docs/manual/benchmarks.md).
"""
from __future__ import annotations

import logging
from typing import Any, List

import torch
from torch import Tensor, nn

log = logging.getLogger("codecx")

#: the backbone's transforms the switches act on (the convolution stacks; GDN is elementwise around a 1x1 conv)
TRANSFORMS = ("g_a", "h_a", "h_s", "g_s")
#: `trainer.compile=auto` compiles runs of at least this many steps (the warm-up, ~10-40 s on 2
#: CPU cores, paid back after 78-973 steps of the main job's model: docs/manual/benchmarks.md)
AUTO_COMPILE_STEPS = 500


def compile_setting(value: Any) -> Any:
    """`trainer.compile` checked: true, false or auto (a ValueError names the key otherwise)."""
    if isinstance(value, str):
        value = {"true": True, "false": False, "auto": "auto"}.get(value.lower(), value)
    if not (isinstance(value, bool) or value == "auto"):
        raise ValueError(f"trainer.compile={value!r}: must be true, false or auto (auto: compile runs of at "
                         f"least {AUTO_COMPILE_STEPS} steps)")
    return value


def wants_compile(setting: Any, max_steps: int) -> bool:
    """Whether `trainer.compile=setting` compiles a run of `max_steps` steps (-1: no limit)."""
    setting = compile_setting(setting)
    if setting == "auto":
        return max_steps < 0 or max_steps >= AUTO_COMPILE_STEPS
    return bool(setting)


def channels_last(x: Tensor) -> Tensor:
    """A 4-d tensor in channels-last memory format (NHWC strides; same values, same shape)."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _contiguous(out: Any) -> Any:
    return out.contiguous() if isinstance(out, Tensor) else out


def speed_up_transforms(backbone: nn.Module, channels_last_on: bool = True, compile_on: bool = False,
                        strict: bool = True, **options: Any) -> List[str]:
    """Run `backbone`'s TRANSFORMS channels-last and/or compiled in training mode; returns the
    names of the transforms changed (none when both switches are off or already applied).

    `options` go to `torch.compile`. `strict=False` (`trainer.compile=auto`): a backend that
    cannot compile (no C++ compiler for inductor on CPU, ...) logs one warning and the transform
    runs uncompiled from then on; `strict=True` raises that error."""
    if not (channels_last_on or compile_on):
        return []
    done = []
    for name in TRANSFORMS:
        part = getattr(backbone, name, None)
        if not isinstance(part, nn.Module) or part._compiled_call_impl is not None:
            continue
        cl = channels_last_on and not strided_pointwise(part)
        if channels_last_on and not cl:
            log.info("trainer.channels_last: %s stays NCHW (a strided 1x1 convolution: oneDNN's channels-last "
                     "weight gradient corrupts the heap there on CPU, torch 2.14)", name)
        if not (cl or compile_on):
            continue
        _speed_up(part, name, cl, compile_on, strict, options)
        done.append(name)
    return done


def strided_pointwise(part: nn.Module) -> bool:
    """Whether `part` holds a 1x1 convolution with stride > 1 (cheng2020's residual-block skips):
    torch 2.14's oneDNN computes its weight gradient in channels-last memory format with heap
    corruption on CPU (aborts, "double free or corruption", seen at 3-8 input channels), so such
    a transform is never switched to channels-last."""
    return any(isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1) and tuple(m.stride) != (1, 1)
               for m in part.modules())


def _speed_up(part: nn.Module, name: str, channels_last_on: bool, compile_on: bool, strict: bool,
              options: dict) -> None:
    eager = part._call_impl
    # compiled: inductor lays the convolutions out itself (channels-last on CPU with oneDNN, by
    # its heuristic on GPU: torch._inductor.config.layout_optimization); converting inside the
    # graph as well measured no faster and, under aot_eager, corrupted the heap on cheng2020
    convert = channels_last_on and not compile_on

    def train_call(x, *args, **kwargs):
        if convert:
            return _contiguous(eager(channels_last(x), *args, **kwargs))
        return eager(x, *args, **kwargs)

    fast = torch.compile(train_call, **options) if compile_on else train_call
    state = {"fast": fast}

    def call(*args, **kwargs):
        if not part.training or not args:
            return eager(*args, **kwargs)
        try:
            return state["fast"](*args, **kwargs)
        except torch._dynamo.exc.BackendCompilerFailed as e:  # raised before the graph runs
            if strict:
                raise RuntimeError(f"trainer.compile=true: torch.compile cannot compile {name} "
                                   f"({_first_line(e)}); train with trainer.compile=false") from e
            state["fast"] = train_call
            log.warning("trainer.compile=auto: torch.compile cannot compile %s (%s); it runs uncompiled",
                        name, _first_line(e))
            return train_call(*args, **kwargs)

    # nn.Module.__call__ runs _compiled_call_impl when set; Module.__getstate__ drops it
    part._compiled_call_impl = call


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
