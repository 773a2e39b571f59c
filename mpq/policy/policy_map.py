"""`DTypePolicyMap`: per-layer policies keyed by layer path (exact or regex), with a default."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from mpq.policy._parse import resolve_policy, serialize_policy
from mpq.policy.policies import DTypePolicy

__all__ = ["DTypePolicyMap"]


def _is_map(value: object) -> bool:
    """A `DTypePolicyMap` or its serialized config: not a single policy."""
    return isinstance(value, DTypePolicyMap) or (
        isinstance(value, dict) and value.get("class_name") == "DTypePolicyMap"
    )


class DTypePolicyMap(MutableMapping[str, DTypePolicy]):
    """Maps layer paths to dtype policies.

    Lookup of a path: an exact key wins; otherwise every key is tried as a regular expression
    that must match the whole path (`re.fullmatch`); more than one matching key is an error
    (it names the keys); no match gives `default_policy`.

    The map holds policies (anything `mpq.policy.get` accepts is resolved on insertion); it is
    not itself a policy. Keys are unique: assigning an existing key raises (delete it first).

    Args:
        default_policy: policy for paths that match no key; `None` takes the global policy at
            construction.
        policy_map: initial `{path_or_regex: policy}` entries.

    Example:
        >>> m = DTypePolicyMap("mixed_bfloat16", {"model/dense.*": "int8_from_mixed_bfloat16"})
        >>> m["model/dense_1"].name, m["model/conv"].name
        ('int8_from_mixed_bfloat16', 'mixed_bfloat16')
    """

    def __init__(
        self, default_policy: object = None, policy_map: Mapping[str, object] | None = None
    ):
        if _is_map(default_policy):
            raise TypeError(
                "Expected `default_policy` to be a single dtype policy. "
                f"Received: default_policy={default_policy!r} (of type {type(default_policy).__name__})"
            )
        self._default = resolve_policy(default_policy)
        self._policies: dict[str, DTypePolicy] = {}
        self._patterns: dict[str, re.Pattern[str]] = {}
        if policy_map is not None:
            if not isinstance(policy_map, Mapping):
                raise TypeError(
                    "Expected `policy_map` to be a mapping from layer paths to policies. "
                    f"Received: policy_map={policy_map!r} (of type {type(policy_map).__name__})"
                )
            for key, value in policy_map.items():
                self[key] = value

    @property
    def default_policy(self) -> DTypePolicy:
        return self._default

    def __getitem__(self, path: object) -> DTypePolicy:
        if not isinstance(path, str):
            raise TypeError(
                f"Expected a layer path (str). Received: path={path!r} (of type {type(path).__name__})"
            )
        exact = self._policies.get(path)
        if exact is not None:
            return exact
        matches = [key for key, pattern in self._patterns.items() if pattern.fullmatch(path)]
        if len(matches) > 1:
            raise ValueError(
                f"Expected at most one key of the DTypePolicyMap to match a layer path. "
                f"Received: path={path!r}, matched by the keys {matches}"
            )
        return self._policies[matches[0]] if matches else self._default

    def __setitem__(self, key: object, policy: object) -> None:
        if not isinstance(key, str):
            raise TypeError(
                f"Expected a layer path or regex (str) as key. Received: key={key!r} "
                f"(of type {type(key).__name__})"
            )
        if key in self._policies:
            raise ValueError(
                f"Expected a new key; each layer path appears once in a DTypePolicyMap (delete it "
                f"first to replace it). Received: key={key!r}, already mapped to "
                f"{self._policies[key]!r}"
            )
        try:
            pattern = re.compile(key)
        except (re.error, RecursionError) as err:  # a pattern nested too deeply recurses
            raise ValueError(
                f"Expected each key to be a layer path or a valid regular expression. "
                f"Received: key={key[:200]!r}{'...' if len(key) > 200 else ''} "
                f"({type(err).__name__}: {err})"
            ) from None
        if _is_map(policy):
            raise TypeError(
                f"Expected a single dtype policy as the value of key {key!r}. "
                f"Received: {policy!r} (of type {type(policy).__name__})"
            )
        self._policies[key] = resolve_policy(policy)
        self._patterns[key] = pattern

    def __delitem__(self, key: str) -> None:
        del self._policies[key]
        del self._patterns[key]

    def __contains__(self, key: object) -> bool:
        """Whether `key` is one of the map's keys (lookup by path never misses: see `[]`)."""
        return key in self._policies

    def __iter__(self) -> Iterator[str]:
        return iter(self._policies)

    def __len__(self) -> int:
        return len(self._policies)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DTypePolicyMap):
            return NotImplemented
        return self._default == other._default and self._policies == other._policies

    __hash__ = None  # type: ignore[assignment]  # mutable: unhashable

    def get_config(self) -> dict[str, Any]:
        """A fresh, JSON-serializable config; nothing in the map is touched."""
        return {
            "default_policy": serialize_policy(self._default),
            "policy_map": {key: serialize_policy(p) for key, p in self._policies.items()},
        }

    @classmethod
    def from_config(cls, config: object) -> DTypePolicyMap:
        if not isinstance(config, dict):
            raise TypeError(
                f"Expected a config dict. Received: config={config!r} (of type {type(config).__name__})"
            )
        return cls(**config)

    def __repr__(self) -> str:
        entries = ", ".join(f"{k!r}: {v.name!r}" for k, v in self._policies.items())
        return f'<DTypePolicyMap default="{self._default.name}" {{{entries}}}>'
