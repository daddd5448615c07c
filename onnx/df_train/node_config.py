"""Reading a df_planner node config as the node does (src/config.rs): a config may name another
as its `base` (absolute, or relative to its own folder), laid under it. Mappings merge key by
key, except that one changing a variant (`kind:` or `form:`) replaces the base's; any other
value replaces the base's. A relative `model.path` resolves from the package root of the
config that names it."""

from pathlib import Path

import yaml

VARIANT_TAGS = ("kind", "form")


def load_node_config(path) -> dict:
    """The config at `path` laid over its chain of bases, without the `base` key."""
    return _over_bases(Path(path), [])


def _over_bases(path: Path, chain: list):
    node = yaml.safe_load(path.read_text())
    if not isinstance(node, dict) or "base" not in node:
        return node
    base = node.pop("base")
    if not isinstance(base, str):
        raise ValueError(f"config {path}: field `base`: expected the path of another config "
                         f"(absolute, or relative to this one's folder), got {base!r}")
    base_path = path.parent / base
    chain = chain + [path.resolve()]
    if base_path.resolve() in chain:
        raise ValueError(f"config {path}: field `base`: {base_path} is already on the chain of bases "
                         f"({' -> '.join(map(str, chain))}): a cycle")
    try:
        below = _over_bases(base_path, chain)
    except OSError as e:
        raise ValueError(f"config {path}: field `base`: {base_path}: {e.strerror}") from e
    model = below.get("model") if isinstance(below, dict) else None
    if isinstance(model, dict) and isinstance(model.get("path"), str) and not Path(model["path"]).is_absolute():
        model["path"] = str(base_path.parent.parent / model["path"])
    return _laid_over(below, node)


def _laid_over(base, over):
    if isinstance(base, dict) and isinstance(over, dict) and not any(
            tag in base and tag in over and base[tag] != over[tag] for tag in VARIANT_TAGS):
        return {**base, **{k: _laid_over(base[k], v) if k in base else v for k, v in over.items()}}
    return over
