"""Unknown options and keys on `metarun`'s command line, caught before Hydra starts, in one line
with the closest valid names (Hydra would answer with a page, or advise a `+key` that then fails)."""

from __future__ import annotations

import difflib
from pathlib import Path

SWEEP_FUNCTIONS = ("glob(", "choice(", "range(", "interval(", "tag(", "sort(", "shuffle(")


def unknown_override(args: list[str], configs: Path) -> str | None:
    """The first override that names a config option or key that does not exist, as a message; or None."""
    groups = {folder.name: sorted(f.stem for f in folder.glob("*.yaml")) for folder in configs.iterdir()
              if folder.is_dir() and folder.name != "hydra"}
    overrides = [arg for arg in args if "=" in arg and not arg.startswith("-")]
    chosen, keys, swept_groups = [], [], False
    for override in overrides:
        key, _, value = override.partition("=")
        if key.startswith(("+", "~", "hydra")) or "/" in key or "@" in key:
            continue  # additions, deletions, Hydra's own settings and nested groups: Hydra checks those
        if key in groups:
            if value.startswith(SWEEP_FUNCTIONS):
                swept_groups = True
                continue
            options = value.split(",")
            for option in options:
                if option not in groups[key] and option != "null":
                    return (f"{key}={option} is not an option of {key}{did_you_mean(option, groups[key])} "
                            f"({key}: {', '.join(groups[key])})")
            chosen.append(f"{key}={options[0]}")
        else:
            keys.append(key)
    if not keys or swept_groups:  # a glob over experiments adds keys we cannot know without each one
        return None
    return unknown_key(keys, chosen)


def unknown_key(keys: list[str], chosen: list[str]) -> str | None:
    """The first dotted key that the config composed from the chosen options does not have."""
    from omegaconf import OmegaConf

    from metarun.cli import compose
    from metarun.errors import MetarunError

    try:
        cfg = OmegaConf.to_container(compose(chosen)[0], resolve=False)
    except MetarunError:
        return None  # Hydra will say what is wrong with the options themselves
    for key in keys:
        parts = key.split(".")
        node = cfg
        for depth, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                return missing_key(key, depth, node, dict(choice.split("=", 1) for choice in chosen))
            node = node[part]
    return None


def missing_key(key: str, depth: int, parent, chosen: dict[str, str]) -> str:
    """`key`'s part at `depth` is not in `parent`: the message, with the closest names in full."""
    parts = key.split(".")
    names = sorted(name for name in parent if not name.startswith("_")) if isinstance(parent, dict) else []
    close = difflib.get_close_matches(parts[depth], names, n=2, cutoff=0.6)
    suggestion = f"; did you mean {' or '.join('.'.join([*parts[:depth], name, *parts[depth + 1:]]) for name in close)}?" if close else ""
    known = ".".join(parts[:depth])
    owner = f"{known}={chosen[known]}" if known in chosen else known or "the config"
    listed = f" ({owner} has: {', '.join(names)})" if names and len(names) <= 25 else f" ({owner} has no settings)" if not names else ""
    return f"{key} is not a setting{suggestion}{listed}"


def did_you_mean(word: str, names: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, names, n=2, cutoff=0.6)
    return f"; did you mean {' or '.join(prefix + name for name in close)}?" if close else ""
