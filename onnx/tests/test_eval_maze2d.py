"""`df-train eval maze2d` end to end: MuJoCo episodes with the Rust planner (`df_planner serve`)
in the loop. The shipped point-mass model stands in for a maze model (same observation and
action layout), so this checks the plumbing and the results format, not the scores."""

import json
import os
import re
import statistics
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mujoco")

from df_train.cli import main  # noqa: E402
from df_train.eval.guidance_rows import summarize  # noqa: E402
from df_train.eval.maze2d import ABLATIONS, Planner, evaluate  # noqa: E402
from df_train.envs.maze2d import Maze2DEnv  # noqa: E402

from .conftest import planner_binary  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"normalized_score_mean", "normalized_score_std", "success_rate", "episodes", "replan_ms_p50", "replan_ms_p99"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    binary = planner_binary()
    text = (ROOT / "config/maze2d_umaze.yaml").read_text()
    text = text.replace("onnx/models/maze2d_umaze.onnx", str(ROOT / "onnx/models/pointmass.onnx"))
    text = text.replace("horizon_tokens: 15", "horizon_tokens: 7").replace("replan_every: 10 ", "replan_every: 8 ")
    config = tmp_path_factory.mktemp("eval") / "umaze_pointmass.yaml"
    config.write_text(text)
    return str(binary), str(config)


def test_results_have_every_key_for_every_configuration(setup, tmp_path):
    binary, config = setup
    out = tmp_path / "new" / "folder" / "results.json"
    evaluate("umaze", 2, binary, config, out, ["no_mcg", "df_mcg", "pd_controller"], seed=3, workers=2)
    results = json.loads(out.read_text())
    assert set(results) == {"df_mcg", "no_mcg", "pd_controller"}
    for name, r in results.items():
        assert KEYS <= set(r), name
        assert r["episodes"] == 2 and 0.0 <= r["success_rate"] <= 1.0
        reached = r["success_rate"] * 2
        expected = ((r["time_to_first_reach_mean"] or 0) * reached + (2 - reached) * 300) / 2
        assert r["time_to_first_reach_censored_mean"] == pytest.approx(expected)
        assert r["replan_ms_p99"] >= r["replan_ms_p50"] > 0
        assert r["plans"] == 2 * (300 // 8 + 1), "one plan every 8 steps of each 300-step episode"
        # Both workers' plans, pooled.
        assert sum(plans for _, plans in r["replan_ms_buckets"]) == r["plans"]
    assert results["no_mcg"]["serve_args"] == ["--samples", "1"]
    # Which model was measured: the config's model file, hashed.
    import hashlib
    model = ROOT / "onnx/models/pointmass.onnx"
    assert results["no_mcg"]["model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()[:16]
    assert 0 < results["df_mcg"]["mcg_shift_mean"] < 10 and results["no_mcg"]["mcg_shift_mean"] is None
    # Per plan the part along plain guidance cannot exceed the averaged pull's length.
    mcg = results["df_mcg"]
    assert 0 < mcg["mcg_pull_mean"] and abs(mcg["mcg_along_mean"]) <= mcg["mcg_pull_mean"] + 1e-9
    assert results["no_mcg"]["mcg_pull_mean"] is None and results["no_mcg"]["mcg_along_mean"] is None
    # Weighted by plain guidance's strength the same bound holds (Cauchy-Schwarz).
    assert mcg["mcg_guidance_sumsq"] > 0 and 0 < mcg["mcg_shift_weighted"] < 10
    assert abs(mcg["mcg_along_weighted"]) <= mcg["mcg_pull_weighted"] + 1e-9
    assert results["no_mcg"]["mcg_pull_weighted"] is None and results["no_mcg"]["mcg_guidance_sumsq"] is None
    # The futures strayed from the plan (each sample's far tokens are its own), and every MCG
    # plan falls in one bin of how far.
    assert mcg["mcg_futures_apart_mean"] > 0 and results["no_mcg"]["mcg_futures_apart_mean"] is None
    assert 0 < sum(row["plans"] for row in mcg["mcg_by_futures_apart"]) <= mcg["plans"]
    assert out.with_suffix(".png").stat().st_size > 10_000, "planned vs executed plot"
    table = out.with_suffix(".md").read_text()
    assert "| umaze df_mcg |" in table and "116.7 ± 2.0" in table and table.count("\n") == 5
    scores = [results[n]["scores"] for n in ("df_mcg", "no_mcg")]
    assert results["no_mcg"]["df_mcg_minus_this"]["mean"] == pytest.approx(sum(scores[0]) / 2 - sum(scores[1]) / 2)
    assert "df_mcg_minus_this" not in results["df_mcg"]


def test_an_episode_scores_the_same_whichever_worker_runs_it(setup):
    from df_train.eval.maze2d import ABLATIONS, evaluate_config

    binary, config = setup
    runs = [evaluate_config("umaze", 2, binary, config, ABLATIONS["df_mcg"], 5, False, workers, record=True)
            for workers in (1, 2)]
    (one, one_paths), (two, two_paths) = runs
    assert one["scores"] == two["scores"] and one["planner_seeds"] == [5, 6]
    assert [p["trajectory"] for p in one_paths] == [p["trajectory"] for p in two_paths]


def test_a_planner_seed_offset_replays_the_same_episodes_under_other_planner_noise(setup):
    from df_train.eval.maze2d import ABLATIONS, evaluate_config

    binary, config = setup
    (base, base_paths), (other, other_paths) = (
        evaluate_config("umaze", 2, binary, config, ABLATIONS["no_mcg"], 5, False, 1, record=True,
                        planner_seed_offset=offset) for offset in (0, 1000))
    assert base["env_seeds"] == other["env_seeds"] == [5, 6]
    assert base["planner_seeds"] == [5, 6] and other["planner_seeds"] == [1005, 1006]
    for a, b in zip(base_paths, other_paths):
        assert a["goal"] == b["goal"] and a["trajectory"][0] == b["trajectory"][0], "the same start and goal"
        assert a["trajectory"] != b["trajectory"], "other planner noise, another path"


def test_multi_goal_rows_cite_only_the_papers_multi_goal_number(setup, tmp_path):
    binary, config = setup
    out = tmp_path / "multi.json"
    evaluate("umaze", 1, binary, config, out, ["df_mcg", "no_mcg"], seed=3, multi_goal=True, workers=1)
    results = json.loads(out.read_text())
    assert results["df_mcg"]["paper"] == [119.1, None] and results["no_mcg"]["paper"] is None


def test_mcg_means_derive_the_part_along_plain_guidance_and_bin_it_by_how_far_the_futures_strayed():
    from df_train.eval.maze2d import (MCG_MEANS, MCG_WEIGHTED, McgRow, mcg_by_futures_apart, mcg_means,
                                      mcg_weighted, pooled_by_futures_apart, pooled_weighted)

    # ḡ = g₀ (s 0, p 1): all of it along; ḡ = 0 (s 1, p 0): none; ḡ = −g₀ (s 2, p 1): −1.
    # Plain guidance's strengths o: 3, 1 and 0.1.
    mcg = [McgRow(0.0, 1.0, 0.2, 3.0), McgRow(1.0, 0.0, 3.0, 1.0), McgRow(2.0, 1.0, 1.0, 0.1)]
    assert mcg_means(mcg) == pytest.approx(
        {"mcg_shift_mean": 1.0, "mcg_pull_mean": 2 / 3, "mcg_along_mean": 0.0, "mcg_futures_apart_mean": 1.4})
    assert mcg_means([]) == dict.fromkeys(MCG_MEANS)
    # Weighted by o², the plan guidance barely reached counts for little: Σ o² = 10.01.
    assert mcg_weighted(mcg) == pytest.approx(
        {"mcg_shift_weighted": ((1 + 0.04) / 10.01) ** 0.5, "mcg_pull_weighted": ((9 + 0.01) / 10.01) ** 0.5,
         "mcg_along_weighted": (9 - 0.01) / 10.01, "mcg_guidance_sumsq": 10.01})
    assert mcg_weighted([]) == dict.fromkeys(MCG_WEIGHTED)
    # Pooled over runs as over their plans: the first plan alone, then the other two.
    parts = [mcg_weighted(mcg[:1]), mcg_weighted(mcg[1:])]
    assert pooled_weighted(parts) == pytest.approx(mcg_weighted(mcg))
    for lacking in (dict.fromkeys(MCG_WEIGHTED), {}):
        assert pooled_weighted([parts[0], lacking]) == dict.fromkeys(MCG_WEIGHTED)
    # Redraws have no futures: their distance is unknown, the rest is not.
    redraw = McgRow(shift=0.0, pull=1.0, apart=None, guidance=1.0)
    assert mcg_means([redraw])["mcg_futures_apart_mean"] is None and mcg_by_futures_apart([redraw]) is None
    rows = mcg_by_futures_apart(mcg)
    assert [r["futures_apart"] for r in rows] == [[0.0, 0.5], [0.5, 1.0], [1.0, None]]
    assert [r["plans"] for r in rows] == [1, 0, 2]
    assert rows[0]["mcg_along_mean"] == 1.0 and rows[1]["mcg_pull_mean"] is None
    assert rows[2]["mcg_pull_mean"] == 0.5 and rows[2]["mcg_along_mean"] == -0.5
    # Pooled over two runs, each bin weighted by its plans.
    other = mcg_by_futures_apart([McgRow(0.0, 1.0, 2.0, 1.0)])
    pooled = pooled_by_futures_apart([{"mcg_by_futures_apart": rows}, {"mcg_by_futures_apart": other}])
    assert [r["plans"] for r in pooled] == [1, 0, 3] and pooled[2]["mcg_pull_mean"] == pytest.approx(2 / 3)
    assert pooled_by_futures_apart([{"mcg_by_futures_apart": rows}, {}]) is None
    rebinned = [dict(row, futures_apart=[0.0, 2.0]) for row in other]
    with pytest.raises(ValueError, match="bin futures_apart differently"):
        pooled_by_futures_apart([{"mcg_by_futures_apart": rows}, {"mcg_by_futures_apart": rebinned}])


def test_a_planner_that_predates_mcg_guidance_is_refused_with_what_to_do():
    from df_train.eval.maze2d import run_episode

    class OldPlanner:
        """Replies as a planner built before serve sent mcg_guidance."""
        def ask(self, request):
            if request["op"] == "reset":
                return {"ok": True}
            return {"ok": True, "action": [0.0, 0.0], "replanned": True, "plan": [request["obs"][:2]],
                    "mcg_shift": 0.2, "mcg_pull": 1.0}

    with pytest.raises(RuntimeError, match="rebuild it"):
        run_episode(OldPlanner(), Maze2DEnv("umaze", seed=0), planner_seed=0)


def test_futures_apart_is_how_far_a_future_strays_from_the_plans_path():
    from df_train.eval.maze2d import futures_apart

    plan = [[0.5 * k, 0.0] for k in range(5)]
    # The same path, slower: near it everywhere.
    assert futures_apart(plan, [[[0.0, 0.0], [0.5, 0.0], [1.0, 0.0]]]) == pytest.approx(0.0)
    # Another way: up a cell and across; the farthest future counts.
    assert futures_apart(plan, [[[0.0, 0.0], [0.5, 0.0], [1.0, 0.0]],
                                [[0.0, 0.0], [0.0, 1.0], [1.0, 1.5]]]) == pytest.approx(1.5)


def test_replan_latency_is_pooled_over_processes_from_their_buckets():
    from df_train.eval.maze2d import pooled_replan_ms

    fast = {"replan_ms_p50": 39.0, "replan_ms_p99": 39.0, "replan_ms_max": 39.0, "replan_ms_buckets": [[40.0, 7]]}
    slow = {"replan_ms_p50": 100.0, "replan_ms_p99": 130.0, "replan_ms_max": 125.0,
            "replan_ms_buckets": [[100.0, 2], [130.0, 1]]}
    pooled = pooled_replan_ms([fast, slow])
    # 10 plans: the 5th is a fast one (its bucket's edge; not the slow process's 100), the 10th
    # the slowest, capped at its time.
    assert pooled == {"replan_ms_p50": 40.0, "replan_ms_p99": 125.0, "replan_ms_max": 125.0,
                      "replan_ms_buckets": [[40.0, 7], [100.0, 2], [130.0, 1]]}
    assert pooled_replan_ms([slow, {**fast, "replan_ms_buckets": [[100.0, 3]]}])["replan_ms_p50"] == 100.0
    # A part written before buckets were reported: the worst part's percentiles, as before.
    old = {k: v for k, v in fast.items() if k != "replan_ms_buckets"}
    assert pooled_replan_ms([old, slow]) == {"replan_ms_p50": 100.0, "replan_ms_p99": 130.0, "replan_ms_max": 125.0,
                                             "replan_ms_buckets": None}
    assert pooled_replan_ms([{**slow, "plans": 0, "replan_ms_p50": 0.0, "replan_ms_p99": 0.0, "replan_ms_max": 0.0,
                              "replan_ms_buckets": []}])["replan_ms_p50"] == 0.0


def test_pooling_matches_df_planners_own_histogram_over_every_plan():
    """tests/fixtures/replan_pooling.json: two serve processes' stats replies, and the
    percentiles df_planner's histogram gives over all their plans (src/serve.rs checks its side)."""
    from df_train.eval.maze2d import pooled_replan_ms

    fixture = json.loads((ROOT / "tests/fixtures/replan_pooling.json").read_text())
    pooled = pooled_replan_ms(fixture["parts"])
    assert {k: pooled[k] for k in fixture["pooled"]} == fixture["pooled"]
    # The median is a fast process's plan: neither process's own median.
    assert pooled["replan_ms_p50"] not in {part["replan_ms_p50"] for part in fixture["parts"]}


def run_file(path, seed, per_config, multi_goal=False):
    """A results.json as `evaluate` writes it: {config: (scores, first reaches or None)}."""
    results = {}
    for name, (scores, reaches) in per_config.items():
        reached = [r for r in reaches if r is not None]
        results[name] = {
            "maze": "medium", "multi_goal": multi_goal, "episodes": len(scores),
            "normalized_score_mean": statistics.fmean(scores), "normalized_score_std": statistics.pstdev(scores),
            "normalized_score_sem": 0.0, "scores": scores, "success_rate": len(reached) / len(scores),
            "time_to_first_reach_mean": statistics.fmean(reached) if reached else None,
            "reached": [r is not None for r in reaches],
            "replan_ms_p50": 50.0 + seed, "replan_ms_p99": 80.0 + seed, "replan_ms_max": 90.0 + seed,
            "plans": 10 * len(scores), "mcg_shift_mean": 0.1 * len(scores) if name == "df_mcg" else None,
            "mcg_pull_mean": 0.2 * len(scores) if name == "df_mcg" else None,
            # Only the later run has it, as when a run from before it existed is merged.
            **({"mcg_along_mean": 0.9} if seed == 12 else {}),
            # Σ‖g₀‖² over the run's plans, to weigh runs by: 1 in the earlier run, 3 in the later
            # (along = (pull² + 1 − shift²) / 2, as in a real run).
            **({"mcg_shift_weighted": 0.5, "mcg_pull_weighted": 1.0, "mcg_along_weighted": 0.875,
                "mcg_guidance_sumsq": 1.0} if seed == 10 else
               {"mcg_shift_weighted": 0.1, "mcg_pull_weighted": 0.9, "mcg_along_weighted": 0.9,
                "mcg_guidance_sumsq": 3.0}
               if name == "df_mcg" else dict.fromkeys(("mcg_shift_weighted", "mcg_pull_weighted",
                                                       "mcg_along_weighted", "mcg_guidance_sumsq"))),
            "plans_through_walls_rate": 0.1 * len(scores),
            "plans_wall_depth_over": {"0.1": 0.05 * len(scores), "0.4": 0.0},
            "plan_positions_in_walls_mean": 0.02 * len(scores),
            "env_seeds": [seed, seed + len(scores) - 1],
            "planner_seeds": [seed, seed + len(scores) - 1], "serve_args": [] if name == "df_mcg" else ["--samples", "1"],
            "config": "config/maze2d_medium.yaml", "paper": None, "wall_s": 1.0,
        }
    path.write_text(json.dumps(results))
    return path


def test_runs_over_adjacent_seeds_merge_into_one_run_over_all_of_them(tmp_path):
    from df_train.eval.maze2d import merge, paired_difference

    mcg = ([100.0, 0.0, 250.0, 40.0, 3.0], [120, None, 1, 300, None])
    plain = ([90.0, 10.0, 240.0, 0.0, 5.0], [150, 400, 2, None, None])
    late = run_file(tmp_path / "late.json", 12, {"df_mcg": (mcg[0][2:], mcg[1][2:]), "no_mcg": (plain[0][2:], plain[1][2:])})
    early = run_file(tmp_path / "early.json", 10, {"df_mcg": (mcg[0][:2], mcg[1][:2]), "no_mcg": (plain[0][:2], plain[1][:2])})
    merged = merge([late, early], tmp_path / "merged.json")
    assert json.loads((tmp_path / "merged.json").read_text()) == merged
    for name, (scores, reaches) in {"df_mcg": mcg, "no_mcg": plain}.items():
        r = merged[name]
        assert r["scores"] == scores and r["episodes"] == 5 and r["env_seeds"] == [10, 14]
        assert r["normalized_score_mean"] == pytest.approx(statistics.fmean(scores))
        assert r["normalized_score_std"] == pytest.approx(statistics.pstdev(scores))
        assert r["normalized_score_sem"] == pytest.approx(statistics.stdev(scores) / 5 ** 0.5)
        reached = [x for x in reaches if x is not None]
        assert r["success_rate"] == pytest.approx(len(reached) / 5)
        assert r["time_to_first_reach_mean"] == pytest.approx(statistics.fmean(reached))
        # Medium's episodes are 600 steps: one that never reached counts as 600.
        assert r["time_to_first_reach_censored_mean"] == pytest.approx(
            statistics.fmean([600 if x is None else x for x in reaches]))
        assert r["reached"] == [x is not None for x in reaches]
        assert r["replan_ms_p99"] == 92.0 and r["plans"] == 50
        assert r["merged_from"] == [str(early), str(late)]
        assert KEYS <= set(r)
    # Plans-weighted: 20 plans at 0.2, 30 at 0.3.
    assert merged["df_mcg"]["mcg_shift_mean"] == pytest.approx(0.26) and merged["no_mcg"]["mcg_shift_mean"] is None
    assert merged["df_mcg"]["mcg_pull_mean"] == pytest.approx(0.52)
    # A run written before mcg_along_mean existed: the pooled value is unknown, not a guess.
    assert merged["df_mcg"]["mcg_along_mean"] is None
    assert merged["df_mcg"]["mcg_shift_weighted"] == pytest.approx(((0.25 + 3 * 0.01) / 4) ** 0.5)
    assert merged["df_mcg"]["mcg_pull_weighted"] == pytest.approx(((1 + 3 * 0.81) / 4) ** 0.5)
    assert merged["df_mcg"]["mcg_along_weighted"] == pytest.approx((0.875 + 3 * 0.9) / 4)
    assert merged["df_mcg"]["mcg_guidance_sumsq"] == pytest.approx(4.0)
    assert merged["no_mcg"]["mcg_pull_weighted"] is None
    assert merged["no_mcg"]["plans_through_walls_rate"] == pytest.approx(0.26)
    assert merged["no_mcg"]["plans_wall_depth_over"] == pytest.approx({"0.1": 0.13, "0.4": 0.0})
    assert merged["no_mcg"]["plan_positions_in_walls_mean"] == pytest.approx(0.052)
    # A run written before the depths existed: unknown, not a guess; other depths: refused.
    older = json.loads(early.read_text())
    del older["no_mcg"]["plans_wall_depth_over"]
    (tmp_path / "older.json").write_text(json.dumps(older))
    assert merge([tmp_path / "older.json", late], tmp_path / "m2.json")["no_mcg"]["plans_wall_depth_over"] is None
    older["no_mcg"]["plans_wall_depth_over"] = {"0.2": 0.1}
    (tmp_path / "older.json").write_text(json.dumps(older))
    with pytest.raises(ValueError, match="measure different depths"):
        merge([tmp_path / "older.json", late], tmp_path / "m3.json")
    assert merged["no_mcg"]["df_mcg_minus_this"] == pytest.approx(paired_difference(mcg[0], plain[0]))
    assert (tmp_path / "merged.md").read_text().count("| medium ") == 2
    # Configurations run in another order pair by name; the model named by any run is kept.
    swapped = json.loads(late.read_text())
    swapped = {name: {**swapped[name], "model_sha256": "0123456789abcdef"} for name in ("no_mcg", "df_mcg")}
    (tmp_path / "swapped.json").write_text(json.dumps(swapped))
    again = merge([early, tmp_path / "swapped.json"], tmp_path / "m4.json")
    assert list(again) == ["df_mcg", "no_mcg"] and again["no_mcg"]["model_sha256"] == "0123456789abcdef"
    assert again["no_mcg"]["df_mcg_minus_this"] == pytest.approx(paired_difference(mcg[0], plain[0]))


def test_merge_refuses_overlapping_seeds_gaps_and_different_evaluations(tmp_path):
    from df_train.eval.maze2d import merge

    a = run_file(tmp_path / "a.json", 0, {"no_mcg": ([1.0, 2.0], [None, 5])})
    with pytest.raises(ValueError, match=r"env seeds \[0, 1\] .* then \[0, 1\] .*adjacent seed ranges"):
        merge([a, a], tmp_path / "out.json")
    gap = run_file(tmp_path / "gap.json", 3, {"no_mcg": ([1.0], [None])})
    with pytest.raises(ValueError, match=r"adjacent seed ranges, without overlap or gap"):
        merge([a, gap], tmp_path / "out.json")
    multi = run_file(tmp_path / "multi.json", 2, {"no_mcg": ([1.0], [None])}, multi_goal=True)
    with pytest.raises(ValueError, match=r"no_mcg\.multi_goal is True, expected False"):
        merge([a, multi], tmp_path / "out.json")
    other = run_file(tmp_path / "other.json", 2, {"df_mcg": ([1.0], [None])})
    with pytest.raises(ValueError, match=r"configurations \['df_mcg'\], expected \['no_mcg'\]"):
        merge([a, other], tmp_path / "out.json")
    reseeded = json.loads(run_file(tmp_path / "reseeded.json", 2, {"no_mcg": ([1.0], [None])}).read_text())
    reseeded["no_mcg"]["planner_seeds"] = [1002, 1002]
    (tmp_path / "reseeded.json").write_text(json.dumps(reseeded))
    with pytest.raises(ValueError, match=r"no_mcg: planner seed offsets \[0, 1000\] differ between runs"):
        merge([a, tmp_path / "reseeded.json"], tmp_path / "out.json")
    retrained = json.loads(run_file(tmp_path / "retrained.json", 2, {"no_mcg": ([1.0], [None])}).read_text())
    retrained["no_mcg"]["model_sha256"] = "0123456789abcdef"
    (tmp_path / "retrained.json").write_text(json.dumps(retrained))
    first = json.loads(a.read_text())
    first["no_mcg"]["model_sha256"] = "fedcba9876543210"
    (tmp_path / "first.json").write_text(json.dumps(first))
    with pytest.raises(ValueError, match=r"no_mcg: model_sha256 differs between \[.*first.json', .*retrained.json'\]"):
        merge([tmp_path / "first.json", tmp_path / "retrained.json"], tmp_path / "out.json")
    # Checked between every two runs that name their model, not only against the first file.
    third = json.loads(run_file(tmp_path / "third.json", 3, {"no_mcg": ([1.0], [None])}).read_text())
    third["no_mcg"]["model_sha256"] = "fedcba9876543210"
    (tmp_path / "third.json").write_text(json.dumps(third))
    with pytest.raises(ValueError, match=r"model_sha256 differs between"):
        merge([a, tmp_path / "retrained.json", tmp_path / "third.json"], tmp_path / "out.json")
    (tmp_path / "curve.json").write_text(json.dumps([{"step": 1000, "score": 3.0}]))
    with pytest.raises(ValueError, match=r"curve.json: not a results.json of df-train eval maze2d"):
        merge([a, tmp_path / "curve.json"], tmp_path / "out.json")
    (tmp_path / "truncated.json").write_text(a.read_text()[:-20])
    with pytest.raises(ValueError, match=r"truncated.json: cannot read a results.json"):
        merge([a, tmp_path / "truncated.json"], tmp_path / "out.json")
    (tmp_path / "fruit.json").write_text(json.dumps({"memory": {"success_rate": 1.0}}))
    with pytest.raises(ValueError, match=r"fruit.json: memory has no \['maze', .*not a results.json of df-train"):
        merge([tmp_path / "fruit.json", a], tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()


def test_runs_written_apart_pair_by_seed_over_the_seeds_both_ran(tmp_path, capsys):
    from df_train.eval.maze2d import pair, paired_difference

    # A later df_mcg run on seeds 12-14 against a no_mcg run on 10-14: paired over 12-14 only.
    mcg = run_file(tmp_path / "mcg.json", 12, {"df_mcg": ([250.0, 40.0, 3.0], [1, 300, None])})
    plain = run_file(tmp_path / "plain.json", 10, {"no_mcg": ([90.0, 10.0, 240.0, 0.0, 5.0], [150, 400, 2, None, 7])})
    paired = pair(str(mcg), str(plain))
    assert paired["env_seeds"] == [12, 14] and paired["episodes"] == 3
    assert paired["a_minus_b"] == pytest.approx(paired_difference([250.0, 40.0, 3.0], [240.0, 0.0, 5.0]))
    assert (paired["a_mean"], paired["b_mean"]) == pytest.approx((293 / 3, 245 / 3))
    assert (paired["a_wins"], paired["b_wins"]) == (2, 1)
    assert (paired["a_reached_where_b_did_not"], paired["b_reached_where_a_did_not"]) == (1, 1)
    # Seeds 12-14 start 3, 7 and 9 cells from Medium's goal: one episode in each of three bands.
    assert [(band["cells"], band["episodes"], band["a_minus_b"]["mean"]) for band in paired["by_route_length"]] == [
        ([0, 3], 1, 10.0), ([4, 7], 1, 40.0), ([8, 11], 1, -2.0)]
    # A file of several configurations needs the one named; the CLI prints one line.
    both = run_file(tmp_path / "both.json", 10, {"df_mcg": ([1.0, 2.0], [None, 5]), "no_mcg": ([0.0, 4.0], [None, None])})
    with pytest.raises(ValueError, match=r"both.json holds \['df_mcg', 'no_mcg'\]: name one as .*both.json:CONFIG"):
        pair(str(both), str(plain))
    with pytest.raises(ValueError, match=r"has no configuration 'pd_controller', only \['df_mcg', 'no_mcg'\]"):
        pair(f"{both}:pd_controller", str(plain))
    main(["eval", "maze2d", "--pair", f"{both}:df_mcg", f"{both}:no_mcg"])
    out = capsys.readouterr().out
    assert out.startswith(f"{both}:df_mcg − {both}:no_mcg, env seeds 10–11 (2 episodes): -0.5 ± 1.5 (t -0.3); "
                          "1.5 against 2.0; wins 1 to 1; reached where the other did not: 1 to 0\n"
                          "  by the start's route length to the goal: 0–3 cells: +1.0 (1.0 against 0.0, 1 episode); "
                          "8–11 cells: -2.0 (2.0 against 4.0, 1 episode)\n"), out


def test_pair_refuses_runs_that_are_not_the_same_episodes(tmp_path):
    from df_train.eval.maze2d import pair

    a = run_file(tmp_path / "a.json", 0, {"no_mcg": ([1.0, 2.0], [None, 5])})
    later = run_file(tmp_path / "later.json", 2, {"no_mcg": ([1.0], [None])})
    with pytest.raises(ValueError, match=r"env seeds \[0, 1\] .*a.json\) and \[2, 2\] .*later.json\) do not overlap"):
        pair(str(a), str(later))
    multi = run_file(tmp_path / "multi.json", 0, {"no_mcg": ([1.0, 2.0], [None, 5])}, multi_goal=True)
    with pytest.raises(ValueError, match=r"multi_goal is False in .*a.json but True in .*multi.json"):
        pair(str(a), str(multi))
    reseeded = json.loads(a.read_text())
    reseeded["no_mcg"]["planner_seeds"] = [1000, 1001]
    (tmp_path / "reseeded.json").write_text(json.dumps(reseeded))
    with pytest.raises(ValueError, match=r"planner seed offsets .*differ"):
        pair(str(a), str(tmp_path / "reseeded.json"))
    with pytest.raises(SystemExit, match=r"eval maze2d --pair: .*nope.json: cannot read a results.json"):
        main(["eval", "maze2d", "--pair", str(a), str(tmp_path / "nope.json")])


def test_eval_help_names_every_configuration(capsys):
    # The CLI imports the evaluation lazily (MuJoCo), so its help lists the names by hand.
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert all(name in help_text for name in ABLATIONS), help_text


def test_a_node_loop_configuration_names_its_plan_time():
    from df_train.eval.maze2d import serve_args

    assert serve_args("node_loop_100ms") == ["--node-loop", "--plan-time-ms", "100"]
    assert serve_args("node_loop_no_mcg_1200ms") == ["--samples", "1", "--node-loop", "--plan-time-ms", "1200"]
    assert serve_args("no_mcg") == ["--samples", "1"]
    for name in ("node_loop_ms", "node_loop_1.5ms", "node_loop_100", "no_mcg_100ms"):
        with pytest.raises(ValueError, match=rf"--configs: unknown '{re.escape(name)}', expected one of .*node_loop_<T>ms"):
            serve_args(name)


def test_a_measured_node_loop_configuration_draws_from_the_bench_report_it_is_given():
    from df_train.eval.maze2d import serve_args

    assert serve_args("node_loop_no_mcg_measured", "b.json") == ["--samples", "1", "--node-loop", "--plan-times",
                                                                  "b.json"]
    assert serve_args("node_loop_measured", "b.json") == ["--node-loop", "--plan-times", "b.json"]
    with pytest.raises(ValueError, match=r"--configs node_loop_measured: needs --plan-times FILE"):
        serve_args("node_loop_measured")


def test_eval_refuses_plan_times_it_cannot_use_before_any_episode(setup, tmp_path):
    binary, config = setup
    base = ["eval", "maze2d", "--maze", "umaze", "--episodes", "1", "--planner", binary, "--config", config,
            "--out", str(tmp_path / "r.json")]
    with pytest.raises(SystemExit, match=r"--configs node_loop_no_mcg_measured: needs --plan-times FILE"):
        main([*base, "--configs", "node_loop_no_mcg_measured"])
    with pytest.raises(SystemExit, match=r"--plan-times: only with --configs node_loop_measured"):
        main([*base, "--configs", "no_mcg", "--plan-times", str(tmp_path / "b.json")])
    with pytest.raises(SystemExit, match=r"--plan-times: .*b.json: no such file"):
        main([*base, "--configs", "node_loop_measured", "--plan-times", str(tmp_path / "b.json")])
    assert not (tmp_path / "r.json").exists()


def test_measured_plan_times_land_plans_at_the_drawn_times_and_bad_reports_are_named(setup, tmp_path):
    from df_train.eval.maze2d import open_planner, serve_args

    binary, config = setup
    report = tmp_path / "bench.json"
    # As `df_planner bench --config C` prints it: every plan 35 ms (steps of 10 ms: lands at the 4th).
    report.write_text(json.dumps({"plan_latency": {"p50_ms": 35.0}, "plan_latency_buckets": [[35.0, 20]]}))
    planner = open_planner(binary, config, serve_args("node_loop_no_mcg_measured", str(report)))
    try:
        planner.ask({"op": "reset", "goal": [1.0, 1.0], "seed": 3})
        replanned = [planner.ask({"op": "step", "obs": [1.0, 2.0, 0.0, 0.0]})["replanned"]
                     for _ in range(6)]
        assert replanned.index(True) == 4
    finally:
        planner.close()
    report.write_text(json.dumps({"plan_latency_buckets": [[35.0, 0]]}))
    bad = subprocess.run([binary, "serve", "--config", config, *serve_args("node_loop_measured", str(report))],
                         input="", capture_output=True, text=True)
    assert bad.returncode != 0
    assert "plan_latency_buckets[0]: expected a count > 0, got 0" in bad.stderr, bad.stderr


def test_eval_refuses_an_unknown_configuration_before_any_episode(setup, tmp_path):
    binary, config = setup
    with pytest.raises(SystemExit, match=r"--configs: unknown 'node_loop_fast', expected one of \['df_mcg'"):
        main(["eval", "maze2d", "--maze", "umaze", "--episodes", "1", "--planner", binary, "--config", config,
              "--configs", "no_mcg,node_loop_fast", "--out", str(tmp_path / "r.json")])
    assert not (tmp_path / "r.json").exists()


def test_paired_difference_cancels_the_shared_spread():
    from df_train.eval.maze2d import paired_difference

    d = paired_difference([10.0, 50.0, 90.0], [8.0, 47.0, 89.0])
    assert d["mean"] == pytest.approx(2.0)
    assert d["sem"] == pytest.approx(1.0 / 3**0.5)
    assert d["t"] == pytest.approx(2.0 * 3**0.5)


def test_the_planner_refuses_a_goal_outside_the_maze_and_keeps_serving(setup):
    binary, config = setup
    planner = Planner(binary, config, [])
    try:
        with pytest.raises(RuntimeError, match="outside the workspace"):
            planner.ask({"op": "reset", "goal": [10.0, 10.0]})
        assert planner.ask({"op": "reset", "goal": [1.0, 1.0]})["ok"]
        reply = planner.ask({"op": "step", "obs": [1.0, 2.0, 0.0, 0.0]})
        assert len(reply["action"]) == 2 and reply["replanned"]
    finally:
        planner.close()


def test_serve_takes_every_configuration_s_overrides(setup):
    from df_train.eval.maze2d import open_planner, serve_args

    binary, config = setup
    for name in [*ABLATIONS, "node_loop_100ms", "node_loop_no_mcg_40ms"]:
        args = serve_args(name)
        if args is None:
            continue  # a baseline without the planner
        planner = open_planner(binary, config, args)
        try:
            planner.ask({"op": "reset", "goal": [1.0, 1.0]})
            # A plan lands at the first step, or when it is done (steps of 10 ms: 100 ms, the 11th).
            replanned = [planner.ask({"op": "step", "obs": [1.0, 2.0, 0.0, 0.0]})["replanned"] for _ in range(11)]
            plan_ms = float(args[args.index("--plan-time-ms") + 1]) if "--plan-time-ms" in args else 0
            assert replanned.index(True) == plan_ms // 10, name
        finally:
            planner.close()


def test_the_node_loop_runs_the_same_episodes_and_counts_what_the_node_did(setup, tmp_path):
    binary, config = setup
    out = tmp_path / "node.json"
    # One worker: its process runs both episodes, so the counters of the first are summed at
    # the second's reset.
    results = evaluate("umaze", 2, binary, config, out, ["df_mcg", "node_loop"], seed=3, workers=1)
    node, served = results["node_loop"], results["df_mcg"]
    assert KEYS <= set(node) and node["serve_args"] == ["--node-loop"]
    assert node["plans"] == served["plans"] == 2 * (300 // 8 + 1), "the node replans on serve's schedule"
    assert node["replan_ms_p99"] >= node["replan_ms_p50"] > 0
    counters = node["node_loop"]
    assert counters["ticks"] == 600 and counters["plan_errors"] == 0 and counters["stop"] == 0
    assert counters["steps_skipped"] == counters["steps_recorded_late"] == counters["late_actions_dropped"] == 0, \
        "plans land at once"
    assert 0 <= counters["goal_held"] <= 600 and served["node_loop"] is None
    assert "df_mcg_minus_this" in node and len(node["scores"]) == 2
    assert 0 <= node["plans_through_walls_rate"] <= 1, "the node's plans come back as serve's do"
    # Pooled over runs by merge; a run from before a counter existed leaves that counter unknown.
    from df_train.eval.maze2d import merge

    later = {name: {**r, "env_seeds": [5, 6], "planner_seeds": [5, 6]} for name, r in results.items()}
    del later["node_loop"]["node_loop"]["steps_skipped"]
    (tmp_path / "later.json").write_text(json.dumps(later))
    pooled = merge([out, tmp_path / "later.json"], tmp_path / "pooled.json")["node_loop"]["node_loop"]
    assert pooled["ticks"] == 1200 and pooled["steps_skipped"] is None


def test_straight_to_goal_reaches_the_goal_only_along_an_open_straight_line(setup, tmp_path):
    from df_train.eval.maze2d import StraightToGoal, paired_difference, run_episode

    binary, config = setup
    # U-Maze, goal in cell (1, 1): open along row 1 from (1, 3); the wall cell (2, 1) lies
    # between (3, 1) and the goal.
    baseline = StraightToGoal(config)
    assert run_episode(baseline, ReachFrom((1, 3)), 0)["first_reach"] is not None
    assert run_episode(baseline, ReachFrom((3, 1)), 0)["total_reward"] == 0.0
    out = tmp_path / "baseline.json"
    results = evaluate("umaze", 2, binary, config, out, ["df_mcg", "straight_to_goal"], seed=3)
    r = results["straight_to_goal"]
    assert r["serve_args"] is None and r["plans"] == 0 and r["replan_ms_p50"] is None
    assert "df_mcg_minus_this" in r and "straight_to_goal" in out.with_suffix(".md").read_text()
    planner = results["df_mcg"]
    against = planner["against_straight_to_goal"]
    assert against["this_minus_straight"] == pytest.approx(paired_difference(planner["scores"], r["scores"]), nan_ok=True)
    both = list(zip(planner["reached"], r["reached"]))
    assert against["reached_where_straight_did_not"] == sum(a and not b for a, b in both)
    assert len(both) == 2 and "against_straight_to_goal" not in r
    assert r["plans_through_walls_rate"] is None and r["plans_wall_depth_over"] is None
    assert r["plan_positions_in_walls_mean"] is None and 0 <= planner["plan_positions_in_walls_mean"] <= 1
    assert list(planner["plans_wall_depth_over"]) == ["0.1", "0.25", "0.4"]


class FixedPlan:
    """A planner that replans every step with the same plan and stands still."""

    def __init__(self, plan):
        self.plan = plan

    def ask(self, request):
        return {"ok": True, "action": [0.0, 0.0], "replanned": True, "plan": self.plan}


def test_plans_through_walls_are_counted():
    from df_train.eval.maze2d import run_episode

    # U-Maze: cell (2, 1) is a wall between (1, 1) and (3, 1); (1, 1) -> (1, 3) is open.
    through = run_episode(FixedPlan([[3.0, 1.0], [2.0, 1.0], [1.0, 1.0]]), ReachFrom((3, 1)), 0)
    along = run_episode(FixedPlan([[1.0, 1.0], [1.0, 2.0], [1.0, 3.0]]), ReachFrom((3, 1)), 0)
    # The plan's (2, 1) is 0.3 inside the wall square [1.3, 2.3] x [0.3, 1.3] (0.3 from (3, 1)'s).
    assert through["plan_wall_depths"] == pytest.approx([0.3] * 300) and along["plan_wall_depths"] == [0.0] * 300
    # One of the three positions is inside a wall.
    assert through["plan_wall_shares"] == pytest.approx([1 / 3] * 300) and along["plan_wall_shares"] == [0.0] * 300


def test_objective_check_scores_both_paths_from_every_start(setup, tmp_path):
    from df_train.eval.objective import objective_check

    binary, config = setup
    out = tmp_path / "objective.json"
    summary = objective_check("umaze", 3, binary, config, [20, 300], out)
    assert json.loads(out.read_text())["straight_blocked"] == summary["straight_blocked"]
    blocked = [r for r in summary["starts"] if not r["straight_reaches"]]
    assert summary["straight_blocked"] == len(blocked)
    for h in (20, 300):
        assert summary["prefers_straight_where_blocked"][h] == sum(
            r["straight_reward"][h] > r["route_reward"][h] for r in blocked)
    for r in summary["starts"]:
        # D4RL's waypoint controller reaches every U-Maze goal within an episode.
        assert r["route_reaches"] and set(r["route_reward"]) == {20, 300}


class ReachFrom(Maze2DEnv):
    """U-Maze episodes that start in one cell."""

    def __init__(self, cell):
        super().__init__("umaze", seed=0)
        self.cell = cell

    def reset(self, cell=None):
        return super().reset(self.cell)


def test_a_failing_worker_stops_the_others_at_their_next_episode(monkeypatch):
    import time

    from df_train.eval import maze2d
    from df_train.eval.planner_process import PlannerError

    played = []

    def run_episode(planner, env, planner_seed, record):
        played.append(planner_seed)
        if planner_seed == 1:
            raise PlannerError("the planner exited with code 101")
        time.sleep(0.2)  # worker 0's episodes outlast worker 1's failure
        return {}

    monkeypatch.setattr(maze2d, "run_episode", run_episode)
    with pytest.raises(PlannerError, match="exited with code 101"):
        maze2d.evaluate_config("umaze", 10, None, str(ROOT / "config/maze2d_umaze.yaml"), None, 0, False, 2,
                               record=False)
    # Before, worker 0 played all five of its episodes (0, 2, 4, 6, 8) after worker 1 failed.
    assert 1 in played and len(played) <= 3, played


def test_a_hung_planner_is_killed_and_named(tmp_path):
    # A "planner" that reads nothing and never answers, nor exits at the end of its input.
    hung = tmp_path / "hung_planner"
    hung.write_text("#!/bin/sh\nexec sleep 60\n")
    hung.chmod(0o755)
    planner = Planner(str(hung), "c.yaml", [], reply_timeout_s=0.5)
    with pytest.raises(RuntimeError, match=r"no reply to reset within 0.5 s; killed"):
        planner.ask({"op": "reset"})
    planner.close()
    assert planner.proc.poll() is not None, "not left running"
    silent = Planner(str(hung), "c.yaml", [], reply_timeout_s=0.5)
    silent.close()
    assert silent.proc.poll() is not None, "killed after ignoring the end of its input"


def test_a_planner_that_cannot_start_is_one_clear_error(setup, tmp_path, capfd):
    binary, config = setup
    broken = tmp_path / "broken.yaml"
    broken.write_text(Path(config).read_text().replace("pointmass.onnx", "missing.onnx"))
    planner = Planner(binary, str(broken), [])
    with pytest.raises(RuntimeError, match="exited with code 1"):
        planner.ask({"op": "reset", "goal": [1.0, 1.0]})
    planner.close()
    assert "model.path: expected an ONNX model" in (err := capfd.readouterr().err) and "missing.onnx (not found)" in err


def test_missing_or_absent_inputs_are_named_before_any_episode(setup, tmp_path):
    binary, config = setup
    with pytest.raises(SystemExit, match=r"eval maze2d: missing --maze, --config, --out \("):
        main(["eval", "maze2d", "--planner", binary])
    out = str(tmp_path / "r.json")
    with pytest.raises(SystemExit, match="--planner: nope/df_planner is not an executable file"):
        main(["eval", "maze2d", "--maze", "umaze", "--planner", "nope/df_planner", "--config", config, "--out", out])
    with pytest.raises(SystemExit, match="--config: nope.yaml: no such file"):
        main(["eval", "maze2d", "--maze", "umaze", "--planner", binary, "--config", "nope.yaml", "--out", out])
    with pytest.raises(SystemExit, match=r"the medium maze's goal in \[\[6.0, 6.0\], \[6.0, 6.0\]\] lie outside its "
                                         r"serve.goal_bounds \[\[0.3, 0.3\], \[3.3, 3.3\]\]"):
        main(["eval", "maze2d", "--maze", "medium", "--planner", binary, "--config", config, "--out", out])
    with pytest.raises(SystemExit, match="--curve: the learning curve uses the fixed goal"):
        main(["eval", "maze2d", "--maze", "umaze", "--planner", binary, "--config", config, "--out", out,
              "--curve", str(tmp_path), "--multi-goal"])
    with pytest.raises(SystemExit, match="datagen maze2d: --maze is required"):
        main(["datagen", "maze2d", "--out", str(tmp_path / "d.npz")])


def test_a_planner_built_before_its_sources_changed_is_refused(tmp_path):
    from df_train.cli import check_planner_is_fresh

    crate = tmp_path / "crate"
    (crate / "src" / "control").mkdir(parents=True)
    (crate / "target" / "release").mkdir(parents=True)
    (crate / "Cargo.toml").write_text("[package]\n")
    source = crate / "src" / "control" / "core.rs"
    source.write_text("fn main() {}\n")
    binary = crate / "target" / "release" / "df_planner"
    binary.write_text("#!/bin/sh\n")
    for path, mtime in ((crate / "Cargo.toml", 1_000), (source, 2_000), (binary, 3_000)):
        os.utime(path, (mtime, mtime))
    check_planner_is_fresh(str(binary))
    os.utime(source, (4_000, 4_000))
    with pytest.raises(SystemExit, match=r"df_planner was built before src/control/core.rs last changed \(1 source "
                                         r"file\(s\) newer than the binary\): rebuild it \(cargo build --release\)"):
        check_planner_is_fresh(str(binary))
    # A binary outside any crate's target/ has nothing to compare with.
    elsewhere = tmp_path / "df_planner"
    elsewhere.write_text("#!/bin/sh\n")
    os.utime(elsewhere, (0, 0))
    check_planner_is_fresh(str(elsewhere))


def test_a_config_must_accept_every_goal_its_episodes_set(tmp_path):
    import yaml

    from df_train.cli import check_maze_goals
    from df_train.node_config import load_node_config

    def config(**serve):
        node = load_node_config(ROOT / "config/maze2d_umaze.yaml")
        node["serve"].update(serve)
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(node))
        return str(path)

    # Narrower bounds that hold the fixed goal (1, 1): fine for it, not for Multi2D's random goals.
    narrow = config(goal_bounds=[[0.5, 0.5], [2.0, 2.0]])
    check_maze_goals(narrow, "umaze", multi_goal=False)
    with pytest.raises(SystemExit, match=r"umaze maze's random goals in \[\[0.9, 1.9\], \[1.1, 2.1\]\] lie outside"):
        check_maze_goals(narrow, "umaze", multi_goal=True)
    # A keep-out box over the goal, or bounds beyond the maze (the Medium config's).
    with pytest.raises(SystemExit, match=r"goal in \[\[1.0, 1.0\], \[1.0, 1.0\]\] meet its serve.goal_keepout box"):
        check_maze_goals(config(goal_keepout=[[[0.8, 0.8], [1.2, 1.2]]]), "umaze", multi_goal=False)
    with pytest.raises(SystemExit, match=r"beyond the umaze maze's open cells \[\[0.3, 0.3\], \[3.3, 3.3\]\]"):
        check_maze_goals(str(ROOT / "config/maze2d_medium.yaml"), "umaze", multi_goal=False)


def test_learning_curve_over_snapshots(setup, tmp_path, monkeypatch):
    from df_train.eval.maze2d import learning_curve, paired_difference

    from .conftest import tiny_config
    from df_train.train import train

    binary, config = setup
    cfg = tiny_config(tmp_path, steps=20, snapshot_every=10, tokens=8)  # the config plans 7 tokens
    train(cfg, progress=False)
    out = tmp_path / "curve.json"
    import df_train.eval.maze2d as maze2d

    evaluated = []
    real_evaluate = maze2d.evaluate
    monkeypatch.setattr(maze2d, "evaluate", lambda *args: evaluated.append(args[4]) or real_evaluate(*args))
    thinned = learning_curve("umaze", 2, binary, config, cfg.out, out, configs=("df_mcg", "no_mcg"), every=20)
    assert [p["step"] for p in thinned] == [20]
    assert not (Path(cfg.out) / "snapshots" / "step0000010.onnx").exists()  # skipped, not even exported
    # Without the thinning the skipped snapshot is evaluated; the one measured before is reused.
    points = learning_curve("umaze", 2, binary, config, cfg.out, out, configs=("df_mcg", "no_mcg"))
    assert [p["step"] for p in points] == [10, 20]
    assert [Path(p).name for p in evaluated] == ["step0000020.json", "step0000010.json"]
    assert json.loads(out.read_text()) == points
    assert out.with_suffix(".png").exists()
    for p in points:
        snapshot = json.loads((Path(cfg.out) / "snapshots" / f"step{p['step']:07d}.json").read_text())
        assert list(p["configs"]) == list(snapshot) == ["df_mcg", "no_mcg"]
        for name, summary in p["configs"].items():
            assert summary["normalized_score_mean"] == snapshot[name]["normalized_score_mean"]
            assert summary["plan_positions_in_walls_mean"] == snapshot[name]["plan_positions_in_walls_mean"] is not None
            assert summary["episodes"] == 2
        assert p["df_mcg_minus_no_mcg"] == paired_difference(snapshot["df_mcg"]["scores"], snapshot["no_mcg"]["scores"])

    # A rerun (more snapshots written meanwhile) reuses what was measured; other episodes are not that.
    def evaluate(*args, **kwargs):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(maze2d, "evaluate", evaluate)
    assert learning_curve("umaze", 2, binary, config, cfg.out, out, configs=("df_mcg", "no_mcg")) == points
    with pytest.raises(AssertionError, match="evaluated again"):
        learning_curve("umaze", 1, binary, config, cfg.out, out, configs=("df_mcg", "no_mcg"))
    # A snapshot rewritten since (a new run in the same folder): exported again, not reused.
    snap = Path(cfg.out) / "snapshots" / "step0000010.pt"
    exported = snap.with_suffix(".onnx").stat().st_mtime_ns
    later = snap.with_suffix(".onnx").stat().st_mtime + 10
    os.utime(snap, (later, later))
    with pytest.raises(AssertionError, match="evaluated again"):
        learning_curve("umaze", 2, binary, config, cfg.out, out, configs=("df_mcg", "no_mcg"))
    assert snap.with_suffix(".onnx").stat().st_mtime_ns > exported
    import yaml

    from df_train.node_config import load_node_config

    other = load_node_config(config)
    other["planner"]["seed"] += 1
    other_config = tmp_path / "other.yaml"
    other_config.write_text(yaml.safe_dump(other))
    with pytest.raises(AssertionError, match="evaluated again"):
        learning_curve("umaze", 2, binary, str(other_config), cfg.out, out, configs=("df_mcg", "no_mcg"))


def test_action_spread_compares_the_executed_actions_across_planner_seeds(setup, tmp_path):
    binary, config = setup
    out = tmp_path / "spread.json"
    main(["eval", "maze2d", "--maze", "umaze", "--episodes", "2", "--planner", binary, "--config", config,
          "--action-spread", "2", "--out", str(out)])
    r = json.loads(out.read_text())
    assert r["executed_steps"] == 8 and r["planner_seeds"] == 2 and r["env_seeds"] == [0, 1]
    assert set(r["configurations"]) == {"df_mcg", "no_mcg", "no_guidance"}
    for c in r["configurations"].values():
        assert c["seed_std"] > 0.0 and 0.0 <= c["saturated_rate"] <= 1.0
    # Guidance moves the executed actions: the unguided plans' mean action is elsewhere.
    assert r["mean_action_distance"]["no_mcg - no_guidance"]["measured"] > 0.0
    assert np.load(tmp_path / "spread.npz")["df_mcg"].shape == (2, 2, 8, 2)
    with pytest.raises(SystemExit, match="at least 2 planner seeds"):
        main(["eval", "maze2d", "--maze", "umaze", "--episodes", "1", "--planner", binary, "--config", config,
              "--action-spread", "1", "--out", str(out)])
    with pytest.raises(SystemExit, match="straight_to_goal has no planner"):
        main(["eval", "maze2d", "--maze", "umaze", "--episodes", "1", "--planner", binary, "--config", config,
              "--action-spread", "2", "--configs", "no_mcg,straight_to_goal", "--out", str(out)])
    with pytest.raises(SystemExit, match="--planner-seed-offset: only for an evaluation"):
        main(["eval", "maze2d", "--maze", "umaze", "--episodes", "1", "--planner", binary, "--config", config,
              "--action-spread", "2", "--planner-seed-offset", "7", "--out", str(out)])


def test_chance_distance_is_the_distance_of_sign_flipped_seed_differences():
    from df_train.eval.action_spread import chance_distance, mean_distance

    rng = np.random.default_rng(1)
    same = rng.normal(size=(30, 16, 3, 2)), rng.normal(size=(30, 16, 3, 2))
    shifted = same[0], same[1] + 1.0
    # Two samples of one distribution lie about as far apart as chance puts them; a shift of 1
    # in both dimensions (√2 apart) stands far out of it.
    assert mean_distance(*same) == pytest.approx(chance_distance(*same, rng), rel=0.15)
    assert mean_distance(*shifted) > 1.2 > 2 * chance_distance(*shifted, rng)
    # Paired seeds (the same noise in both, a little of their own): a shift of 0.1 in both
    # dimensions stands out, though unpaired, the noise would hide it.
    paired = same[0], same[0] + 0.1 + 0.01 * rng.normal(size=same[0].shape)
    assert mean_distance(*paired) > 0.13 > 3 * chance_distance(*paired, rng)
    assert chance_distance(*paired, rng) < 0.5 * mean_distance(same[0], same[1] + 0.1)


def test_guidance_rows_summarize_the_planners_trace_events():
    # Two rows at the noisiest timestep (as the fmt subscriber writes them, colours included)
    # and one at the next: x0 move = scale · gain · rms ‖g₀‖, MCG's move = scale · gain · rms ‖ḡ − g₀‖.
    lines = [
        "\x1b[35mTRACE\x1b[0m df_planner::diffusion::sampler: mcg row \x1b[3mrow\x1b[0m\x1b[2m=\x1b[0m0 "
        "\x1b[3mtimestep\x1b[0m\x1b[2m=\x1b[0m999 gain=100.0 moved=1e-6 own=4e-4",
        "TRACE df_planner::diffusion::sampler: mcg row row=0 timestep=999 gain=100.0 moved=3e-6 own=4e-4",
        "TRACE df_planner::diffusion::sampler: mcg row row=1 timestep=899 gain=6.0 moved=0 own=1e-4",
        "INFO something else entirely",
    ]
    rows = summarize(lines, scale=30.0)
    assert [r["timestep"] for r in rows] == [999, 899] and [r["rows"] for r in rows] == [2, 1]
    assert rows[0]["x0_step"] == pytest.approx(30 * 100 * 0.02)
    assert rows[0]["mcg_move"] == pytest.approx(30 * 100 * np.sqrt(2e-6))
    assert rows[0]["rel_shift"] == pytest.approx(np.sqrt(4e-6 / 8e-4))
    assert rows[1]["x0_step"] == pytest.approx(30 * 6 * 0.01) and rows[1]["rel_shift"] == 0.0
    assert sum(r["share"] for r in rows) == pytest.approx(1.0) and rows[0]["share"] == pytest.approx(60 / 61.8)


def test_an_mcg_plan_traces_every_guided_row_and_plain_guidance_none(setup):
    binary, config = setup
    requests = json.dumps({"op": "reset", "goal": [1.0, 1.0]}) + "\n" + json.dumps({"op": "step", "obs": [1.0, 2.0, 0.0, 0.0]}) + "\n"
    env = {**os.environ, "RUST_LOG": "df_planner::diffusion::sampler=trace"}

    def trace(samples):
        run = subprocess.run([binary, "serve", "--config", config, "--samples", str(samples)], input=requests,
                             capture_output=True, text=True, env=env, check=True)
        return summarize(run.stderr.splitlines(), scale=30.0)

    rows = trace(4)
    # One plan: the executed tokens step through all 10 sampling levels; the noisiest (ᾱ = 0)
    # takes the config's gain cap (`max_gain: 100`), and the gain falls with the noise.
    assert len(rows) == 10 and rows[0]["gain"] == 100.0
    assert [r["gain"] for r in rows] == sorted((r["gain"] for r in rows), reverse=True)
    assert all(r["rel_shift"] > 0 for r in rows)
    assert trace(1) == []
