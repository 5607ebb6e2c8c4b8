"""Models by name: ``build_model(name, channels, num_classes, init)``.

``name`` is one of ggl's classifiers (``available_models()``) or the user's own model as a dotted path
``pkg.module:Attr``, where ``Attr`` is an ``nn.Module`` class or a factory function called as
``Attr(channels=C, num_classes=K)`` that returns an ``nn.Module`` taking (N, C, 32, 32) images in [0, 1]
and returning (N, K) logits. A name the user writes in their own config is imported as they ask; a name
read from a *file* (an observation's ``arch``) goes through ``check_trusted_model`` first: only ggl's own
modules and the dotted paths the user lists (``attack.trusted_models``) are imported, because importing a
module runs its code.
"""
from __future__ import annotations

import importlib
import re
from typing import Callable, Iterable, List

import torch
from torch import nn

from ggl.core.errors import ConfigError
from ggl.core.registry import Registry
from ggl.models.classifiers import LeNetDLG, SmallCNN, dlg_init_, resnet18_32

_CLASSIFIERS: Registry[Callable[[int, int], nn.Module]] = Registry("model")
_CLASSIFIERS.add("cnn", SmallCNN)
_CLASSIFIERS.add("lenet", LeNetDLG)
_CLASSIFIERS.add("resnet18", resnet18_32)
# ggl's classes under their builtin names (model_name_of): the reverse of _CLASSIFIERS where it is one-to-one
_BUILTIN_CLASSES = {SmallCNN: "cnn", LeNetDLG: "lenet"}
# the modules a model name read from a file may point into without the user vouching for it: ggl's own
TRUSTED_MODEL_MODULES = ("ggl.models",)
_DOTTED = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def available_models() -> List[str]:
    return _CLASSIFIERS.names()


def is_dotted(name: str) -> bool:
    """Whether ``name`` names a user model (``pkg.module:Attr``) rather than a builtin one."""
    return isinstance(name, str) and ":" in name


def check_model_name(name: str, key: str = "model.name") -> None:
    """A builtin name or a well-formed dotted path ``pkg.module:Attr`` (nothing is imported here)."""
    if is_dotted(name):
        if not _DOTTED.match(name):
            raise ConfigError(f"config key '{key}' = {name!r} is not a dotted path of the form pkg.module:Class")
        return
    if name not in _CLASSIFIERS:
        raise ConfigError(f"config key '{key}' = {name!r} is not one of {', '.join(_CLASSIFIERS.names())} "
                          f"(or your own model as pkg.module:Class)")


def check_trusted_model(name: str, trusted: Iterable[str] = (), where: str = "observation") -> None:
    """Refuse, before any import, a user model that a file names and the user did not list.

    Builtin names and paths into ``TRUSTED_MODEL_MODULES`` pass; any other ``pkg.module:Attr`` must be in
    ``trusted`` (``attack.trusted_models``)."""
    if not is_dotted(name):
        return
    module = name.split(":", 1)[0]
    if any(module == m or module.startswith(m + ".") for m in TRUSTED_MODEL_MODULES) or name in set(trusted):
        return
    raise ConfigError(f"{where} names the model '{name}', which is not one of ggl's; it was not imported. "
                      f"If you trust it, list it: attack.trusted_models=['{name}']")


def resolve_model(name: str, where: str = "config key 'model.name'") -> Callable[..., nn.Module]:
    """The class or factory a dotted name points at (imports its module)."""
    if not _DOTTED.match(str(name)):
        raise ConfigError(f"{where}: {name!r} is not a dotted path of the form pkg.module:Class")
    module_name, attr = name.split(":", 1)
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{where}: model '{name}' cannot be imported ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:160]})") from None
    if not callable(obj):
        raise ConfigError(f"{where}: '{name}' is neither an nn.Module class nor a factory function")
    return obj


def model_name_of(model: nn.Module) -> str:
    """The name ``build_model`` rebuilds ``model``'s architecture from: ggl's builtin name, else the dotted
    path of its class. (resnet18 is a torchvision class: pass its name explicitly.)"""
    cls = type(model)
    if cls in _BUILTIN_CLASSES:
        return _BUILTIN_CLASSES[cls]
    if cls.__module__ in ("__main__", "builtins") or "<locals>" in cls.__qualname__:
        raise ConfigError(f"model class {cls.__qualname__} is defined in {cls.__module__} or inside a function: "
                          f"an attacker could not import it; define it in a module and pass its name as "
                          f"pkg.module:Class")
    if cls.__module__.startswith("torchvision."):
        raise ConfigError(f"model class {cls.__module__}.{cls.__qualname__}: pass its ggl name (e.g. 'resnet18') "
                          f"or a factory as pkg.module:function explicitly")
    return f"{cls.__module__}:{cls.__qualname__}"


def build_model(name: str, channels: int, num_classes: int, init: str = "default",
                seed: int | None = None, where: str = "config key 'model.name'") -> nn.Module:
    """Build a classifier; with ``seed`` its initial weights depend on nothing else. ``where`` names the
    source of ``name`` in the one-line errors (a config key, an observation file)."""
    if is_dotted(name):
        factory = resolve_model(name, where)
    elif name in _CLASSIFIERS:
        factory = None
    else:
        raise _CLASSIFIERS.unknown(name, "model.name")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        if factory is None:
            model = _CLASSIFIERS[name](channels, num_classes)
        else:
            try:
                model = factory(channels=channels, num_classes=num_classes)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{where}: model '{name}' could not be built as {name.split(':')[1]}(channels={channels}, "
                                  f"num_classes={num_classes}) ({str(exc).splitlines()[0][:160]})") from None
            if not isinstance(model, nn.Module):
                raise ConfigError(f"{where}: model '{name}' returned a {type(model).__name__}, not a torch.nn.Module")
        if init == "dlg":
            dlg_init_(model)
    return model
