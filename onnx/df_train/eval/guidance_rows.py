"""Where along the scheduling rows the reward guidance acts, and how far MCG moves it there.

`df_planner` logs one `mcg row` event per sampling row of an MCG plan at trace level
(`RUST_LOG=df_planner::diffusion::sampler=trace`): the timestep of the nearest shared token
that steps in the row, the guidance gain there, and Σ‖ḡ − g₀‖², Σ‖g₀‖² over the stepping shared
tokens (MCG's average against sample 0's own gradient). Per timestep this prints how far the
guidance moves x̂0 (scale · gain · ‖g₀‖), that move's share of all rows', and how far MCG's
average moves it (scale · gain · ‖ḡ − g₀‖, and relative to the first, ‖ḡ − g₀‖ / ‖g₀‖):

    RUST_LOG=df_planner::diffusion::sampler=trace df-train eval maze2d ... --configs df_mcg 2> rows.log
    python -m df_train.eval.guidance_rows rows.log --scale 30
"""

import argparse
import math
import re
from collections import defaultdict

EVENT = re.compile(r"mcg row row=\d+ timestep=(-?\d+) gain=(\S+) moved=(\S+) own=(\S+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def summarize(lines, scale: float) -> list[dict]:
    """Per timestep (noisiest first): rows, gain, rel_shift, x0_step, share, mcg_move."""
    sums = defaultdict(lambda: {"rows": 0, "moved": 0.0, "own": 0.0, "gain": 0.0})
    for line in lines:
        m = EVENT.search(ANSI.sub("", line))
        if m:
            s = sums[int(m[1])]
            s["rows"] += 1
            s["gain"] = float(m[2])
            s["moved"] += float(m[3])
            s["own"] += float(m[4])
    out = []
    for t in sorted(sums, reverse=True):
        s = sums[t]
        n = s["rows"]
        out.append({
            "timestep": t,
            "rows": n,
            "gain": s["gain"],
            "rel_shift": math.sqrt(s["moved"] / s["own"]) if s["own"] > 0 else 0.0,
            "x0_step": scale * s["gain"] * math.sqrt(s["own"] / n),
            "mcg_move": scale * s["gain"] * math.sqrt(s["moved"] / n),
        })
    total = sum(r["x0_step"] for r in out)
    for r in out:
        r["share"] = r["x0_step"] / total if total > 0 else 0.0
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("log", help="stderr of a planner run with RUST_LOG=df_planner::diffusion::sampler=trace")
    p.add_argument("--scale", type=float, required=True, help="the config's planner.guidance_scale")
    a = p.parse_args(argv)
    with open(a.log) as f:
        rows = summarize(f, a.scale)
    if not rows:
        raise SystemExit(f"{a.log}: no 'mcg row' events (run an MCG config with RUST_LOG=df_planner::diffusion::sampler=trace)")
    print("timestep  rows    gain  |x0 move|  share  MCG moves it by  (relative)")
    for r in rows:
        print(f"{r['timestep']:8d} {r['rows']:5d} {r['gain']:7.3f} {r['x0_step']:9.2f} {100 * r['share']:5.0f} % "
              f"{r['mcg_move']:15.2f}  ({r['rel_shift']:.2f})")


if __name__ == "__main__":
    main()
