"""Configs laid over a `base`, read as the node reads them (tests/configs.rs checks the node)."""

from pathlib import Path

import pytest
import yaml

from df_train.node_config import load_node_config

ROOT = Path(__file__).resolve().parents[2]


def test_a_config_laid_over_its_bases_merges_mappings_and_replaces_the_rest(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(
        {"planner": {"samples": 1, "guidance_scale": 30.0, "goal": {"sigma": 2.0}}, "safety": {"action_min": [-1, -1]}}))
    (tmp_path / "middle.yaml").write_text("base: base.yaml\nplanner: {samples: 4, goal: {squash: tanh}}\n")
    (tmp_path / "top.yaml").write_text("base: middle.yaml\nplanner: {samples: 8}\nsafety: {action_min: [-2]}\n")
    assert load_node_config(tmp_path / "top.yaml") == {
        "planner": {"samples": 8, "guidance_scale": 30.0, "goal": {"sigma": 2.0, "squash": "tanh"}},
        "safety": {"action_min": [-2]},
    }


def test_a_bad_base_is_refused_naming_it(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ValueError, match=r"b\.yaml: field `base`: .*a\.yaml is already on the chain.*a cycle"):
        load_node_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: [b.yaml]\n")
    with pytest.raises(ValueError, match="field `base`: expected the path of another config"):
        load_node_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ValueError, match=r"d\.yaml: field `base`: .*nowhere\.yaml: No such file"):
        load_node_config(tmp_path / "d.yaml")


def test_a_yaml_merge_key_is_refused_as_the_node_refuses_it(tmp_path):
    (tmp_path / "m.yaml").write_text("planner: &p {samples: 4}\ncontrol:\n  rate_hz: 100\n  <<: *p\n")
    with pytest.raises(ValueError, match=r"m\.yaml: line 4: YAML merge keys .* `base: other\.yaml`"):
        load_node_config(tmp_path / "m.yaml")
    # An alias of a whole value is not a merge: the node reads it too.
    (tmp_path / "a.yaml").write_text("planner: &p {samples: 4}\nother: *p\n")
    assert load_node_config(tmp_path / "a.yaml") == {"planner": {"samples": 4}, "other": {"samples": 4}}


def test_a_changed_variant_replaces_the_bases_and_a_bases_model_path_stays_its_own(tmp_path):
    (tmp_path / "pkg" / "config").mkdir(parents=True)
    (tmp_path / "pkg" / "config" / "base.yaml").write_text(yaml.safe_dump(
        {"model": {"path": "onnx/models/x.onnx"}, "planner": {"matrix": {"kind": "pyramid", "uncertainty": 1.0},
                                                              "guidance_form": {"form": "score", "max_gain": 5.0}}}))
    (tmp_path / "mine.yaml").write_text("base: pkg/config/base.yaml\nplanner:\n  matrix: {kind: trapezoid}\n"
                                        "  guidance_form: {form: score, max_gain: 7.0}\n")
    assert load_node_config(tmp_path / "mine.yaml") == {
        "model": {"path": str(tmp_path / "pkg" / "onnx/models/x.onnx")},
        "planner": {"matrix": {"kind": "trapezoid"}, "guidance_form": {"form": "score", "max_gain": 7.0}}}


def test_the_maze_variants_are_their_maze_config_with_their_changes():
    medium = {
        # Whole-episode plans take over a second on CPU: no plan age limit.
        "episode": {("model", "path"): "onnx/models/maze2d_medium_episode.onnx", ("planner", "horizon_tokens"): 60,
                    ("safety", "max_plan_age_s"): None},
        "long": {("model", "path"): "onnx/models/maze2d_medium_long.onnx", ("planner", "horizon_tokens"): 31,
                 ("planner", "goal", "squash"): "tanh", ("safety", "max_plan_age_s"): 3.0},
        "wide": {("model", "path"): "onnx/models/maze2d_medium_wide.onnx", ("planner", "guidance_scale"): 10.0,
                 ("safety", "max_plan_age_s"): 3.0},
        "wide_episode": {("model", "path"): "onnx/models/maze2d_medium_wide_episode.onnx",
                         ("planner", "horizon_tokens"): 60, ("planner", "guidance_scale"): 10.0,
                         ("safety", "max_plan_age_s"): None},
        # The same model, its plans tracked by a PD controller and made every 50 steps; its model
        # path comes from its base, which resolves it against that base's package root.
        "wide_episode_pd": {("model", "path"): str(ROOT / "onnx/models/maze2d_medium_wide_episode.onnx"),
                            ("planner", "horizon_tokens"): 60, ("planner", "guidance_scale"): 10.0,
                            ("safety", "max_plan_age_s"): None, ("planner", "replan_every"): 50,
                            ("serve", "execute"): "pd_controller"},
    }
    # The same, its plans tracked 1.3 times faster than planned.
    medium["wide_episode_pd_tempo"] = {**medium["wide_episode_pd"], ("serve", "tempo"): 1.3}
    # Large's whole-episode model at Medium's whole-episode guidance scale, and tracked by a PD.
    large_episode = {("model", "path"): "onnx/models/maze2d_large_episode.onnx", ("planner", "horizon_tokens"): 80,
                     ("planner", "guidance_scale"): 10.0, ("safety", "max_plan_age_s"): None}
    large_episode_pd = {**large_episode, ("model", "path"): str(ROOT / "onnx/models/maze2d_large_episode.onnx"),
                        ("planner", "replan_every"): 50, ("serve", "execute"): "pd_controller"}
    # The same, with the model trained twice as long.
    large = {"episode": large_episode, "episode_pd": large_episode_pd,
             "episode_40k_pd": {**large_episode_pd, ("model", "path"): "onnx/models/maze2d_large_episode_40k.onnx"}}
    for maze, changes in {"medium": medium, "large": large}.items():
        for variant, fields in changes.items():
            check_variant(maze, variant, fields)


def check_variant(maze, variant, fields):
    """config/maze2d_<maze>_<variant>.yaml is config/maze2d_<maze>.yaml with `fields` changed."""
    expected = load_node_config(ROOT / f"config/maze2d_{maze}.yaml")
    for keys, value in fields.items():
        node = expected
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    assert load_node_config(ROOT / f"config/maze2d_{maze}_{variant}.yaml") == expected, (maze, variant)
