"""Why a job reruns: the settings keys that changed, instead of its whole settings before and now.

Each rule passes its command the config values it reads as one JSON param (``--settings``), so Snakemake's params
trigger reruns a job exactly when one of them changes. Snakemake's reason for it prints every changed param whole,
before and now: two copies of the settings, over a thousand characters for a training job, in which the user has
to find the key that differs. :func:`use_short_params_reason` makes that reason name the changed keys::

    reason: Params have changed since last execution: segmentation.stage2.fc_dim: 16 -> 32

A key a job starts or stops reading (the config changed which keys apply) shows as ``(not read) -> value`` or
``value -> (not read)``; a changed param that is not settings JSON is named by its value, shortened.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterable, Mapping

__all__ = ["settings_changes", "describe_params_change", "use_short_params_reason"]

NOT_READ = "(not read)"
_WIDTH = 60  # characters of one shown value


def _leaves(tree: Mapping, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _short(text: str) -> str:
    return text if len(text) <= _WIDTH else text[: _WIDTH - 3] + "..."


def _shown(value) -> str:
    return _short(value if value is NOT_READ else json.dumps(value))


def settings_changes(before: Mapping, now: Mapping) -> list[str]:
    """``"key: old -> new"`` for every dotted key whose value differs between two settings trees, sorted."""
    old, new = _leaves(before), _leaves(now)
    return [f"{key}: {_shown(old.get(key, NOT_READ))} -> {_shown(new.get(key, NOT_READ))}"
            for key in sorted(old.keys() | new.keys()) if old.get(key, NOT_READ) != new.get(key, NOT_READ)]


def _settings(serialized: str) -> dict | None:
    """The settings tree of a param as Snakemake records it (``repr`` of the value), or None for another param."""
    try:
        value = ast.literal_eval(serialized)
        tree = json.loads(value) if isinstance(value, str) else None
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return tree if isinstance(tree, dict) else None


def describe_params_change(before: Iterable[str], now: Iterable[str]) -> str | None:
    """The changed keys of the settings params among Snakemake's changed params (their records, before and now);
    other changed params by their shortened value. None when no settings param is among them."""
    old = [(p, _settings(p)) for p in sorted(before)]
    new = [(p, _settings(p)) for p in sorted(now)]
    old_settings = [tree for _, tree in old if tree is not None]
    new_settings = [tree for _, tree in new if tree is not None]
    if not (old_settings and new_settings):
        return None
    changes = list(dict.fromkeys(c for a in old_settings for b in new_settings for c in settings_changes(a, b)))
    others = [", ".join(_short(p) for p, tree in params if tree is None) for params in (old, new)]
    if any(others):
        changes.append(f"other params: {others[0] or '-'} -> {others[1] or '-'}")
    return "; ".join(changes) or "settings reordered"


def use_short_params_reason() -> bool:
    """Make Snakemake's "Params have changed" reason name the changed settings keys (:func:`describe_params_change`);
    False, and Snakemake's own text, where its params record is not the one this was written against."""
    try:
        from snakemake.persistence import ParamsChange
    except ImportError:
        return False
    if getattr(ParamsChange, "_a2dpipe_keys", False):
        return True  # a module of the workflow (seeds, mask comparison) includes the rules again
    if not {"only_old", "only_new"} <= set(getattr(ParamsChange, "__dataclass_fields__", ())):
        return False
    original = ParamsChange.__str__

    def reason(self) -> str:
        short = describe_params_change(self.only_old, self.only_new) if self else None
        return original(self) if short is None else short

    ParamsChange.__str__ = reason
    ParamsChange._a2dpipe_keys = True
    return True
