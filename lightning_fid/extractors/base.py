"""What any feature extractor must offer, and the frozen wrapper every extractor runs in.

Any ``torch.nn.Module`` that maps a batch of images to (N, D) features can be used. A module may
declare itself with three attributes (all optional):

- ``name`` (str): identifies the extractor in cache keys and logs (default: the class name);
- ``feature_dim`` (int): D (default: found by one forward pass on a tiny batch);
- ``input_range``: ``"uint8"`` to receive uint8 RGB NCHW images in [0, 255] (Inception, CLIP), or
  ``(low, high)`` to receive float32 RGB images scaled to that range (default ``(0.0, 1.0)``).

Generated images are always quantised to 8 bits first (as if saved to PNG), then handed over in the
declared form, so a domain encoder sees exactly what it would see when reading PNG files.
"""

from __future__ import annotations

import hashlib
import types
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from lightning_fid.engine._images import InputRange, parse_range


@runtime_checkable
class FeatureExtractor(Protocol):
    """Optional self-description of an extractor (see the module docstring)."""

    name: str
    feature_dim: int
    input_range: InputRange

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class ExtractorInfo:
    name: str
    feature_dim: int
    input_range: InputRange
    fingerprint: str  # hash of weights (or of the published file) for cache keys
    config: str = ""  # hash of the module's configuration: layers, sizes and every option attribute
    unidentified: str = ""  # an option attribute without a stable identity ("": none)


class AlwaysEval(nn.Module):
    """A module that stays in eval mode: ``.train()`` cannot switch it (or its children) back.

    Lightning calls ``.train()`` on the LightningModule, and an extractor reachable from it would
    otherwise start updating BatchNorm statistics.
    """

    def __init__(self) -> None:
        super().__init__()
        super().train(False)

    def train(self, mode: bool = True) -> AlwaysEval:
        return super().train(False)


class Frozen(AlwaysEval):
    """Runs ``module`` in eval mode without gradients, however it is reached.

    ``.train()`` on the wrapper cannot switch it back (:class:`AlwaysEval`). The module itself may
    also be reachable another way, e.g. as an attribute of the LightningModule, whose ``.train()``
    Lightning calls every epoch: so every forward pass puts each submodule in eval mode for its
    duration (no BatchNorm statistics update, no dropout) and restores the modes it found, which
    the user's own training of a shared encoder may need.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module  # its modes and requires_grad flags are left as they are: a user may train it

    def train(self, mode: bool = True) -> Frozen:
        """Stays in eval mode, and leaves the wrapped module's own mode alone (see the class docstring)."""
        self.training = False
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        modes = [(m, m.training) for m in self.module.modules()]
        try:
            for m, _ in modes:
                m.training = False
            with torch.no_grad():
                return self.module(images)
        finally:
            for m, mode in modes:
                m.training = mode


def weights_fingerprint(module: nn.Module) -> str:
    """SHA-256 of the module's tensors as they are now: every parameter and every buffer, persistent
    or not (a published file's hash would not see weights changed after loading)."""
    digest = hashlib.sha256()
    for kind, named in (("p", module.named_parameters()), ("b", module.named_buffers())):
        for key, tensor in named:
            digest.update(f"{kind}:{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def describe(module: nn.Module, probe_size: int = 32) -> ExtractorInfo:
    """Read (or infer) the extractor's name, feature dimension and input form."""
    inner = module.module if isinstance(module, Frozen) else module
    name = getattr(inner, "name", None) or type(inner).__name__
    input_range: Any = getattr(inner, "input_range", (0.0, 1.0))
    parse_range(input_range)  # validates
    dim = getattr(inner, "feature_dim", None)
    if dim is None:
        device = next((p.device for p in inner.parameters()), torch.device("cpu"))
        probe = torch.zeros(2, 3, probe_size, probe_size, dtype=torch.uint8, device=device)
        out = run_extractor(module, probe, input_range)
        dim = out.shape[1]
    config, unidentified = module_config(inner)
    return ExtractorInfo(str(name), int(dim), input_range, weights_fingerprint(inner), config, unidentified)


_MODULE_INTERNALS = frozenset(vars(nn.Module()))  # _parameters, _buffers, _modules, hooks, training, ...
_PLAIN = (bool, int, float, str, bytes, type(None), torch.dtype, torch.device, torch.Size)


def _attribute_identity(value: Any) -> str | None:
    """A stable description of one attribute value, or None when there is none."""
    from lightning_fid.engine._cache import stable_identity

    if isinstance(value, _PLAIN):
        return repr(value)
    if isinstance(value, (tuple, list, frozenset, set)):
        parts = [
            _attribute_identity(v) for v in (sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value)
        ]
        return None if None in parts else f"{type(value).__name__}({', '.join(parts)})"  # type: ignore[arg-type]
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: repr(kv[0]))
        parts = [_attribute_identity(v) for _, v in items]
        return None if None in parts else "{" + ", ".join(f"{k!r}: {p}" for (k, _), p in zip(items, parts)) + "}"
    if isinstance(value, torch.Tensor):  # a tensor attribute that is neither a parameter nor a buffer
        return hashlib.sha256(value.detach().cpu().contiguous().numpy().tobytes()).hexdigest() + str(value.dtype)
    return stable_identity(value)


_LIBRARIES = ("torch.", "torchvision.", "timm.", "torch_fidelity.")  # versioned code: the version is in the key
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _code_identity(code: types.CodeType) -> str:
    """What a function computes, from its bytecode, names and constants (nested functions included):
    the same for the same code in every run, different once the code is edited."""
    parts = [code.co_code.hex(), repr(code.co_names), repr(code.co_varnames)]
    for const in code.co_consts:
        parts.append(_code_identity(const) if isinstance(const, types.CodeType) else repr(const))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _function_identity(function: types.FunctionType) -> str | None:
    """A hook's identity: its code, defaults and the values it closes over; None when one of those has
    no stable identity (a module or an object without a stable repr)."""
    captured = [c.cell_contents for c in function.__closure__ or ()] + list(function.__defaults__ or ())
    texts = [_attribute_identity(v) if not isinstance(v, nn.Module) else None for v in captured]
    return None if None in texts else _code_identity(function.__code__) + repr(texts)


def _class_identity(cls: type) -> str:
    """What a class outside versioned libraries computes: the code of its methods and its plain class
    attributes, for it and its bases (an edited ``forward`` or a changed class option is another network)."""
    parts = []
    for base in cls.__mro__:
        if base in (nn.Module, object) or base.__module__.startswith(_LIBRARIES):
            continue
        for name, value in sorted(vars(base).items()):
            function = getattr(value, "__func__", value)  # staticmethod / classmethod
            if isinstance(value, property):
                function = value.fget
            if isinstance(function, types.FunctionType):
                parts.append(f"{base.__qualname__}.{name}:{_code_identity(function.__code__)}")
            elif not name.startswith("__") and isinstance(value, (*_PLAIN, tuple, list, dict)):
                parts.append(f"{base.__qualname__}.{name}={_attribute_identity(value)}")
    return "\n".join(parts)


def module_config(module: nn.Module) -> tuple[str, str]:
    """(hash of the configuration, what has no stable identity or "") of ``module``.

    The configuration is, for every submodule: its class (with the code of classes outside torch,
    torchvision, timm and torch-fidelity, whose versions key the cache instead: an edited ``forward``
    is another network), every attribute it keeps besides parameters, buffers and child modules
    (``mode="max"`` / ``"avg"``), class-level options, and its hooks. Anything without a stable
    identity (a lambda hook or attribute) is named instead.
    """
    digest = hashlib.sha256(repr(module).encode())
    for path, sub in module.named_modules():
        where = path + "." if path else ""
        code = _class_identity(type(sub))
        digest.update(f"{path}:{type(sub).__module__}.{type(sub).__qualname__}:{code}".encode())
        for hooks in _HOOKS:
            for hook in getattr(sub, hooks, {}).values():
                function = getattr(hook, "__func__", hook)
                text = _function_identity(function) if isinstance(function, types.FunctionType) else None
                if text is None:
                    return digest.hexdigest()[:16], f"hook {where}{hooks[1:]} ({getattr(hook, '__qualname__', hook)})"
                digest.update(f"{hooks}={text}".encode())
        for attr, value in sorted(vars(sub).items()):
            if attr in _MODULE_INTERNALS:
                continue
            text = _attribute_identity(value)
            if text is None:
                return digest.hexdigest()[:16], f"attribute {where}{attr}"
            digest.update(f"{attr}={text}".encode())
    return digest.hexdigest()[:16], ""


def run_extractor(
    module: nn.Module, images_uint8: torch.Tensor, input_range: InputRange, output: int = 0
) -> torch.Tensor:
    """Feed uint8 RGB images to ``module`` in its declared form; return (N, D) float features (output
    ``output`` of an extractor that returns several, e.g. Inception's pool features and logits)."""
    return select_output(forward_extractor(module, images_uint8, input_range), output, module, images_uint8.shape[0])


def forward_extractor(module: nn.Module, images_uint8: torch.Tensor, input_range: InputRange) -> Any:
    """The extractor's raw output for uint8 RGB images fed in its declared form."""
    bounds = parse_range(input_range)
    x = images_uint8
    if bounds is not None:
        low, high = bounds
        x = images_uint8.to(torch.float32) / 255.0 * (high - low) + low
    with torch.no_grad():
        return module(x)


def select_output(features: Any, output: int, module: nn.Module, count: int) -> torch.Tensor:
    """Output ``output`` of a raw extractor result, checked and flattened to (N, D)."""
    if isinstance(features, (tuple, list)):
        features = features[output]
    elif output != 0:
        raise ValueError(f"feature extractor {type(module).__name__} returns one output, not output {output}")
    if features.ndim == 4 and features.shape[2:] == (1, 1):
        features = features.flatten(1)  # pooled conv features
    if features.ndim != 2 or features.shape[0] != count:
        raise ValueError(
            f"feature extractor {type(module).__name__} returned shape {tuple(features.shape)} for "
            f"{count} images; it must return (N, D) features"
        )
    return features
