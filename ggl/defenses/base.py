"""The defense plugin contract: one defense = one dataclass in one file under ``ggl/defenses/``.

Its fields are its config keys (``name`` first, defaulting to the config name); ``@register`` adds it.
It defines ``check(key)`` (range checks: a ``ConfigError`` naming ``key.<field>``), ``label`` (``q4``),
``transform(tensors, update) -> (tensors, bits)`` (pure; ``bits=None``: size unchanged; ``update.rng``
gives seeded randomness, ``update.private`` the client's data), ``norm_preserving``, optionally
``keeps_client_state`` + ``apply(tensors, update, state)`` (per-client state such as error feedback),
and ``attack_model()`` for the adaptive attacker (``reapply``, ``expectation``, ``observed_mask`` or
``no_model(reason)``). Optional federation hooks, called by ``ggl.fl.callbacks.DefenseCallback``:
``bind``, ``setup``, ``round_stats``, ``round_metrics``, ``summary``. The whole contract: docs/extending.md, "Add
your own defense"; a complete defence: ``examples/my_defense.py``.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass, fields, is_dataclass
from fractions import Fraction
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple, Type

from torch import Tensor

from ggl.core.errors import ConfigError
from ggl.core.registry import Registry

FLOAT_BITS = 32

REGISTRY: Registry[Type["Defense"]] = Registry("defence")

# what the adaptive attacker knows of a defense (AttackModel.kind)
REAPPLY, EXPECTATION, MASK, NONE = "reapply", "expectation", "observed mask", "none"

Tensors = List[Tensor]


@dataclass(frozen=True)
class AttackModel:
    """How the adaptive attacker models one defense on its trial updates.

    ``reapply``: ``fn`` (tensors -> tensors) is the client's own deterministic transform, applied as is
    (``straight_through=False``: it is differentiable) or with an identity gradient (rounding, sign).
    ``expectation``: ``fn`` is E[transform] (``None``: the identity, for unbiased randomness).
    ``observed mask``: the coordinates the observed update does not carry (exact zeros) are zeroed.
    ``none``: the attacker has no model; ``reason`` says why (an adaptive attack is refused).
    ``batched_fn``: optional, ``fn`` of P trial updates at once (each tensor (P, *shape)), the values of
    ``vmap(fn)``; a search applies the chain natively when every step has one, else through ``vmap``
    (whose per-op dispatch made the 4-bit quantizer ~1.8x slower on a population of 50).
    """
    kind: str
    fn: Optional[Callable[[Sequence[Tensor]], Tensors]] = None
    straight_through: bool = False
    reason: str = ""
    batched_fn: Optional[Callable[[Sequence[Tensor]], Tensors]] = None

    @property
    def changes_search(self) -> bool:
        """False when applying it is the identity: an adaptive search would be the non-adaptive one."""
        return self.kind == MASK or self.fn is not None


def reapply(fn: Optional[Callable] = None, straight_through: bool = False,
            batched_fn: Optional[Callable] = None) -> AttackModel:
    return AttackModel(REAPPLY, fn, straight_through, batched_fn=batched_fn)


def expectation(fn: Optional[Callable] = None) -> AttackModel:
    return AttackModel(EXPECTATION, fn)


def observed_mask() -> AttackModel:
    return AttackModel(MASK)


def no_model(reason: str) -> AttackModel:
    return AttackModel(NONE, reason=reason)


class Defense:
    """Base class of the defenses (see the module docstring); subclasses are dataclasses."""

    norm_preserving = False       # class default; a property where it depends on the settings
    round_stat_keys: Tuple[str, ...] = ()
    # the report's grouping of labels (its figure panels); ``register`` sets it to the name unless declared
    family: ClassVar[str] = ""
    # a regex matching the start of this defence's ``label`` (one part of a chain label); "" = its name
    label_pattern: ClassVar[str] = ""

    def check(self, key: str) -> None:
        pass

    @property
    def label(self) -> str:
        return self.name  # type: ignore[attr-defined]

    def transform(self, tensors: Sequence[Tensor], update) -> Tuple[Tensors, Optional[int]]:
        raise NotImplementedError(f"defense '{self.name}' defines no transform")  # type: ignore[attr-defined]

    @property
    def keeps_client_state(self) -> bool:
        return False

    def apply(self, tensors: Sequence[Tensor], update, state: Optional[Tensor]
              ) -> Tuple[Tensors, Optional[int], Optional[Tensor]]:
        """(sent tensors, bits or None, the client's new state or None); stateless: ``transform``."""
        out, bits = self.transform(list(tensors), update)
        return out, bits, None

    def attack_model(self) -> AttackModel:
        return no_model(f"defense '{self.name}' declares no model for the adaptive attacker")  # type: ignore

    # ------------------------------------------------------------------ optional federation hooks
    @property
    def sensitivity_bound(self) -> Optional[float]:
        """An L2 bound this defense puts on every update it sends (a clip), else None."""
        return None

    def bind(self, chain: Sequence["Defense"], index: int, key: str) -> "Defense":
        """This defense as entry ``index`` of ``chain`` (checks that need the chain raise here)."""
        return self

    def setup(self, model, key: str) -> Optional[str]:
        """Checks against the federation's model before training; returns a warning to show, or None."""
        return None

    def round_stats(self, before: Sequence[Tensor], after: Sequence[Tensor]) -> Dict[str, float]:
        """Numbers (``round_stat_keys``) of one update, averaged over a round's updates and logged."""
        return {}

    def round_metrics(self, rounds: int, sample_rate: float) -> Dict[str, float]:
        """Metrics logged after each round (e.g. a DP epsilon so far)."""
        return {}

    def summary(self, rounds: int, sample_rate: Optional[float]) -> Optional[dict]:
        """What results.json says about this defense (``final.privacy``), or None."""
        return None


def register(cls):
    """Class decorator: a ``Defense`` subclass becomes a dataclass known to configs by its ``name``."""
    if "__dataclass_fields__" not in vars(cls):
        cls = dataclass(cls)
    names = {f.name: f for f in fields(cls)}
    if "name" not in names or not isinstance(names["name"].default, str):
        raise TypeError(f"defense {cls.__qualname__} needs a first field `name: str = '<config name>'`")
    if not issubclass(cls, Defense):
        raise TypeError(f"defense {cls.__qualname__} must subclass ggl.defenses.Defense")
    if "family" not in vars(cls):
        cls.family = names["name"].default
    return REGISTRY.add(names["name"].default, cls, same=_same_class)


def _same_class(a: type, b: type) -> bool:
    """One class imported twice (its module reloaded) is the same defence; any other class is not."""
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def known_names() -> List[str]:
    return sorted(REGISTRY)


def parse_defense(entry: Any, key: str) -> Defense:
    """Turn one ``defenses:`` entry (a mapping with ``name``) into its checked defense object."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(entry, Defense):
        entry.check(key)
        return entry
    if hasattr(entry, "items") and not isinstance(entry, dict):  # an OmegaConf node
        entry = dict(entry.items())
    if not isinstance(entry, dict) or "name" not in entry:
        raise ConfigError(f"config key '{key}' must be a mapping with a 'name' (one of {', '.join(known_names())})")
    name = entry["name"]
    cls = REGISTRY.get(name, f"{key}.name")
    valid = [f.name for f in fields(cls)]
    for k in entry:
        if k not in valid:
            near = difflib.get_close_matches(str(k), valid, n=1, cutoff=0.5)
            hint = f"did you mean '{key}.{near[0]}'?" if near else f"valid keys: {', '.join(valid)}"
            raise ConfigError(f"unknown config key '{key}.{k}' for defence '{name}'; {hint}")
    try:
        spec = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), entry))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"config key '{key}.{getattr(exc, 'full_key', '?')}': {str(exc).splitlines()[0]}") from None
    spec.check(key)
    return spec


def parse_chain(entries: Sequence[Any], key: str = "defenses") -> List[Defense]:
    """A whole ``defenses:`` list through ``parse_defense``, entry i's errors named ``<key>[i]``."""
    return [parse_defense(entry, f"{key}[{i}]") for i, entry in enumerate(entries)]


def check_chain(specs: Sequence[Defense], key: str = "defenses") -> None:
    """Checks that need the whole chain (each entry's own keys are checked by ``parse_defense``)."""
    specs = list(specs)
    for i, spec in enumerate(specs):
        spec.bind(specs, i, f"{key}")


def defenses_label(specs: Sequence[Defense]) -> str:
    """A short name for a defence chain, used for run names and W&B groups ('fp32' when empty)."""
    labels = [s.label for s in specs if s.label not in ("fp32", "identity")]
    return "+".join(labels) if labels else "fp32"


def label_owner(part: str) -> Optional[Type[Defense]]:
    """The registered defence whose labels ``part`` (one entry of a chain label) has: the longest match
    of a ``label_pattern`` (its name by default) at the start, the first registered on a tie."""
    best, length = None, -1
    for name, cls in REGISTRY.items():
        m = re.match(cls.label_pattern or re.escape(name), part)
        if m and len(m.group(0)) > length:
            best, length = cls, len(m.group(0))
    return best


def defense_family(label: str) -> str:
    """The families of a chain label, each part's through the registry (``Defense.family``):
    'q4-stochastic-global' -> 'quantize', 'clip0.25+nm0.1' -> 'clip+noise', 'top0.01-ef' -> 'top-k'; 'fp32'
    (no defence) is its own; a part no defence claims (an older run's) loses its numbers and suffix."""
    def family(part: str) -> str:
        owner = None if part == "fp32" else label_owner(part)
        return owner.family if owner else "fp32" if part == "fp32" else re.sub(r"[\d.]+.*$", "", part) or part

    return "+".join(dict.fromkeys(family(part) for part in label.split("+")))


def to_dicts(specs: Sequence[Any]) -> List[dict]:
    """A chain as plain dicts (what results files and observations store)."""
    return [asdict(s) if is_dataclass(s) else dict(s) for s in specs]


def check_percent(key: str, percent: float) -> None:
    """A pruned share (``percent`` of the entries) must leave something to send: [0, 100)."""
    if not 0.0 <= percent < 100.0:
        raise ConfigError(f"config key '{key}.percent' = {percent} must be in [0, 100)")


def share_count(percent: float, n: int) -> int:
    """floor(percent / 100 * n), computed on the decimal value written (33.3% of 1000 is 333, not 332)."""
    return int(Fraction(str(float(percent))) * n / 100)


def flat_cat(tensors: Sequence[Tensor]) -> Tensor:
    import torch

    return torch.cat([t.reshape(-1) for t in tensors])


def split_like(flat: Tensor, tensors: Sequence[Tensor]) -> Tensors:
    import torch

    return [c.view_as(t) for c, t in zip(torch.split(flat, [t.numel() for t in tensors]), tensors)]
