"""Reading a df_planner node config as the node does (src/config.rs): a config may name another
as its `base` (relative to its own folder), laid under it; mappings merge key by key, any other
value replaces the base's."""

from pathlib import Path

import yaml


def load_node_config(path) -> dict:
    """The config at `path` laid over its chain of bases, without the `base` key."""
    return _over_bases(Path(path), [])


def _over_bases(path: Path, chain: list) -> dict:
    node = yaml.safe_load(path.read_text())
    if not isinstance(node, dict) or "base" not in node:
        return node
    base = node.pop("base")
    if not isinstance(base, str):
        raise ValueError(f"config {path}: field `base`: expected the path of another config "
                         f"(relative to this one's folder), got {base!r}")
    base_path = path.parent / base
    chain = chain + [path.resolve()]
    if base_path.resolve() in chain:
        raise ValueError(f"config {path}: field `base`: {base_path} is already on the chain of bases "
                         f"({' -> '.join(map(str, chain))}): a cycle")
    return _laid_over(_over_bases(base_path, chain), node)


def _laid_over(base, over):
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: _laid_over(base[k], v) if k in base else v for k, v in over.items()}}
    return over
