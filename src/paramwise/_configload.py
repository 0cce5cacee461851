"""Reading a config: a YAML file (safe loader, bounded), an OmegaConf/Hydra container or any
Mapping, as plain ``dict``/``list`` values (:func:`load_config`); :mod:`paramwise.config` turns
them into rules and an optimizer.

A config is data, so reading one runs nothing: YAML is read with ``yaml.SafeLoader`` (a key
written twice in one mapping is refused), OmegaConf interpolations are resolved by OmegaConf
itself, and a config deeper than :data:`MAX_DEPTH` or holding more than :data:`MAX_NODES`
values (an alias bomb) is refused.
"""

from __future__ import annotations

import os
import re
import reprlib
from collections.abc import Mapping
from pathlib import Path

from .errors import ParamwiseError
from .options.keys import REAL_KEYS
from .options.regularization import STRENGTH_KEYS

__all__ = ["load_config", "MAX_DEPTH", "MAX_NODES"]


def load_config(cfg: Mapping | str | os.PathLike) -> tuple[dict, str]:
    """``cfg`` as a plain ``dict`` (and a name for messages: the file path or ``"config"``).

    Mappings are copied recursively (OmegaConf containers are resolved first, interpolations
    included); a path is read with ``yaml.safe_load``.

        >>> load_config({"optimizer": "sgd", "lr": 0.1})
        ({'optimizer': 'sgd', 'lr': 0.1}, 'config')
    """
    if isinstance(cfg, (str, os.PathLike)):
        return _load_yaml(Path(cfg)), str(cfg)
    if _is_omegaconf(cfg):  # only reached when the object came from omegaconf
        cfg = _omega_container(cfg, "config")  # type: ignore[assignment]
    if not isinstance(cfg, Mapping):
        raise ParamwiseError(
            f"a config must be a mapping or a path to a YAML file, got {type(cfg).__name__}",
            fix="pass a dict such as {'optimizer': 'adamw', 'lr': 1e-3, 'rules': [...]}, "
            "an OmegaConf DictConfig, or 'path/to/optim.yaml'")
    return _plain(cfg, "config"), "config"


def _is_omegaconf(obj: object) -> bool:
    return type(obj).__module__.split(".")[0] == "omegaconf"


#: A config nested deeper than this is refused (YAML has no use for it; Python would recurse).
MAX_DEPTH = 32
#: At most this many values in one config, aliases counted once (an alias bomb is refused).
MAX_NODES = 100_000


def _plain(obj: object, where: str) -> object:
    """A plain copy of ``obj``: dicts, lists and scalars. A YAML alias (one object reached twice)
    is copied once and shared, never expanded; nesting deeper than :data:`MAX_DEPTH` or more
    than :data:`MAX_NODES` values is an error."""
    memo: dict[int, object] = {}
    alive: list[object] = []  # every object whose id is in memo stays alive (ids are reused)
    count = [0]

    def copy(o: object, at: str, depth: int) -> object:
        if id(o) in memo:
            return memo[id(o)]
        alive.append(o)
        key = id(o)
        if _is_omegaconf(o):
            o = _omega_container(o, at)
            alive.append(o)
        if not isinstance(o, (Mapping, list, tuple)):
            return o
        if depth > MAX_DEPTH:
            raise ParamwiseError(f"{at} is nested more than {MAX_DEPTH} levels deep",
                                 fix="a paramwise config is a flat mapping of options and a list "
                                 "of rules; remove the nesting")
        count[0] += 1
        if count[0] > MAX_NODES:
            raise ParamwiseError(f"the config holds more than {MAX_NODES:,} values (at {at})",
                                 fix="a paramwise config is small; check for aliases that "
                                 "multiply (a YAML alias bomb)")
        if isinstance(o, Mapping):
            out: dict | list = {}
            memo[key] = out
            for k, v in o.items():
                if not isinstance(k, str):
                    raise ParamwiseError(f"{at} has a non-string key {k!r}",
                                         fix="config keys are option names, e.g. lr or select")
                out[k] = copy(v, f"{at}.{k}", depth + 1)  # type: ignore[index]
            return out
        out = []
        memo[key] = out
        out.extend(copy(v, f"{at}[{i}]", depth + 1) for i, v in enumerate(o))
        return out

    return copy(obj, where, 0)


def _omega_container(obj: object, where: str) -> object:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(obj, resolve=True)  # type: ignore[arg-type]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None)
        raise ParamwiseError(f"{where}: OmegaConf cannot resolve the config"
                             + (f" at key {key!r}" if key else "")
                             + f" ({type(e).__name__}: {str(e).splitlines()[0]})",
                             fix="fix the interpolation (${...}) or add the key it refers to"
                             ) from None


def _strict_loader(yaml):  # type: ignore[no-untyped-def]
    """``yaml.SafeLoader`` that refuses a key written twice in one mapping (YAML keeps the last,
    so ``lr: 0.1`` then ``lr: 100.0`` would silently train at 100)."""

    class Strict(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
            seen = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:
                    continue  # unhashable keys are refused later, with their location
                if first is not key_node:
                    raise ParamwiseError(
                        f"key {key!r} is written twice in one mapping (line "
                        f"{first.start_mark.line + 1} and line {key_node.start_mark.line + 1})",
                        fix="keep one of them; YAML would silently keep the last")
            return super().construct_mapping(node, deep=deep)

    return Strict


def _load_yaml(path: Path) -> dict:
    try:
        import yaml
    except ImportError as e:
        raise ParamwiseError(f"reading {str(path)!r} needs PyYAML, which is not installed",
                             fix="pip install 'paramwise[yaml]' (or pip install PyYAML), or "
                             "pass the config as a dict") from e
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise ParamwiseError(f"config file {str(path)!r} {what}",
                             fix="pass the path of a YAML file, or a dict")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ParamwiseError(f"config file {str(path)!r} is not UTF-8 text (byte {e.start})",
                             fix="pass a YAML text file") from None
    try:
        data = yaml.load(text, Loader=_strict_loader(yaml))  # noqa: S506 - a SafeLoader subclass
    except ParamwiseError as e:  # a duplicate key
        raise ParamwiseError(f"config file {str(path)!r}: {e.problem}", fix=e.fix) from None
    except RecursionError:
        raise ParamwiseError(f"config file {str(path)!r} is nested too deeply to read",
                             fix="a paramwise config is a flat mapping and a list of rules"
                             ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        head = f"{str(path)!r} is not valid YAML{at}"
        fix = "fix the YAML syntax (indentation, quotes around selectors that contain ':' or '!')"
        tag = re.fullmatch(r"could not determine a constructor for the tag '(.*)'", problem)
        if isinstance(e, yaml.constructor.ConstructorError) and tag:  # valid YAML, refused
            head, (problem, fix) = f"{str(path)!r}{at}", _tag_refused(tag.group(1))
        raise ParamwiseError(f"{head}: {problem}", fix=fix) from e
    if data is None:
        raise ParamwiseError(f"config file {str(path)!r} is empty",
                             fix="write at least 'optimizer: adamw' and 'lr: ...'")
    if not isinstance(data, dict):
        raise ParamwiseError(f"config file {str(path)!r} holds a {type(data).__name__}, "
                             "not a mapping of keys", fix="start the file with 'optimizer: ...'")
    return _plain(data, str(path))  # type: ignore[return-value]


def _tag_refused(tag: str) -> tuple[str, str]:
    """What is wrong with a YAML tag the safe loader refused, and what to write instead."""
    tag = tag.replace("tag:yaml.org,2002:", "!!")
    if not tag.startswith("!!python/"):
        return (f"the tag {tag} is not a standard YAML tag, and a config is read with YAML's "
                "safe loader, which knows only those",
                "remove the tag and write the value itself (a number, string, list or mapping)")
    named = tag.partition(":")[2] if tag.startswith(("!!python/name:", "!!python/module:")) \
        else ""
    return (f"the tag {tag} would build a Python object, and a config is read with YAML's safe "
            "loader, which refuses tags that run or import code",
            f"write plain values instead: an optimizer as its name or import path, without "
            f"the tag (optimizer: {named or 'torch.optim.AdamW'}); numbers, strings and lists "
            "as they are")


# --------------------------------------------------------------------------------- values
# Real-valued options: YAML integers (``weight_decay: 0``) become floats, as in Python rules.
_REAL_KEYS = REAL_KEYS | {*STRENGTH_KEYS, "max_norm", "betas", "etas"}
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[-+]?(inf|nan)", re.IGNORECASE)


def _number(key: str, value: object, where: str, depth: int = 0, name: str = "") -> object:
    """YAML leftovers → Python values: '1e-5' → 1e-05, 0 → 0.0 for real keys, lists → tuples
    (option values are short: a list of more than 64 values, or lists nested 3 deep, is an
    error naming ``where`` rather than a copy)."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = float(value)
    if key in _REAL_KEYS and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, list):
        if len(value) > 64 or depth >= 3:
            raise ParamwiseError(f"{where} sets {name or key or 'an option'} to a list too long "
                                 f"or too deeply nested to be an option value: {_short(value)}",
                                 fix="option values are numbers, bools, strings or short "
                                 "tuples such as betas: [0.9, 0.999]")
        # the numbers in betas: [0, 0.999] become floats too (torch refuses mixed betas)
        value = tuple(_number(key if key in ("betas", "etas", "eps") else "", v, where,
                              depth + 1, name or key) for v in value)
    return value


def _short(value: object) -> str:
    """``repr`` cut short (a shared YAML structure must never be expanded in a message)."""
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxdict, r.maxstring, r.maxother = 3, 6, 6, 80, 80
    return r.repr(value)
