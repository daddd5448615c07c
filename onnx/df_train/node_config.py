"""Reading a df_planner node config as the node does (src/config.rs): a config may name another
as its `base` (absolute, or relative to its own folder), laid under it. Mappings merge key by
key, except that one changing a variant (`kind:` or `form:`) replaces the base's; any other
value replaces the base's. A relative `model.path` resolves from the package root of the
config that names it. YAML merge keys (`<<`) are refused, as the node refuses them."""

from pathlib import Path

import yaml

VARIANT_TAGS = ("kind", "form")


class _NodeYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader without merge keys, which the node's YAML reader (serde_yaml_ng)
    does not apply: a config that used one would read differently here than on the robot."""

    def flatten_mapping(self, node):
        for key, _ in node.value:
            if key.tag == "tag:yaml.org,2002:merge":
                raise ValueError(f"line {key.start_mark.line + 1}: YAML merge keys (`<<`) are not read by "
                                 "df_planner; a config can start from another with `base: other.yaml`")
        super().flatten_mapping(node)


def load_node_config(path) -> dict:
    """The config at `path` laid over its chain of bases, without the `base` key."""
    return _over_bases(Path(path), [])


def _over_bases(path: Path, chain: list):
    try:
        node = yaml.load(path.read_text(), Loader=_NodeYamlLoader)
    except ValueError as e:
        raise ValueError(f"config {path}: {e}") from e
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
