"""Every benchmark in one go: ``bench/results.json`` and the table ``bench/RESULTS.md``.

``make bench`` runs this (``make bench ARGS=--quick`` for the quick mode). Each benchmark runs
in its own process, one after another (the machines are noisy: every figure with a peer is a
ratio measured in the same process), and writes its own JSON under ``bench/parts/``; this script
then gathers the headline figures into ``bench/results.json`` (keys as ``peers.diffusers.crps_ratio``)
beside each benchmark's whole JSON, and renders ``bench/RESULTS.md``: figure, value, goal, and
the command that measured it.

* ``--quick``: every benchmark on small inputs (``debug=tiny`` runs, small grids, few steps):
  minutes; it checks the machinery, its figures are not the project's figures.
* full (default): the default QG main job and its peer, the sampler sweep against a 1000-step
  reference, scaling to 256x256, evaluate on 100 cases of 721x1440, prepare on 4 GB, 20 kills
  per stage: 65 min on 2 CPU cores (quick: 4 min).

``--only peer,nfe`` runs some of them (the others keep their last parts); ``--gather`` only
rebuilds ``results.json`` and ``RESULTS.md`` from ``bench/parts``. A benchmark that fails is
recorded as failed (with the end of its output) and the others still run; the exit code is 1 then.
The ``gpu`` entry is kept from an earlier GPU run unless this machine has a CUDA device.

    python benchmarks/run_all.py --quick
    python benchmarks/run_all.py --only scaling,memory_evaluate
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from simdiff.base.atomic import atomic_file, write_json  # noqa: E402

PY = sys.executable


@dataclass(frozen=True)
class Bench:
    """One benchmark: its command in each mode (``{part}``: its JSON, ``{run}``: the shared QG run)
    and what it contributes to results.json (dotted key -> (value, goal, goal met or None))."""

    name: str
    quick: list[str]
    full: list[str]
    figures: Callable[[dict[str, Any]], dict[str, tuple[Any, str, bool | None]]]
    needs_run: bool = False


def _at(d: dict, *keys: str, default: Any = None) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def peer_figures(j: dict) -> dict:
    return {
        "peers.diffusers.crps_ratio": (
            j["crps_ratio"],
            "< 1 (simdiff CRPS / pixel-space diffusers CRPS)",
            j["crps_ratio"] < 1,
        ),
        "peers.diffusers.members_per_s_ratio": (
            j["members_per_s_ratio"],
            ">= 5",
            j["members_per_s_ratio"] >= 5,
        ),
        "peers.diffusers.simdiff_members_per_s": (j["simdiff"]["members_per_s"], "", None),
        "peers.diffusers.diffusers_members_per_s": (j["diffusers"]["members_per_s"], "", None),
        "peers.diffusers.simdiff_train_samples_per_s": (
            j["simdiff"]["diffusion_samples_per_s"],
            "(latent diffusion)",
            None,
        ),
        "peers.diffusers.diffusers_train_samples_per_s": (j["diffusers"]["samples_per_s"], "", None),
        "peers.diffusers.train_budget_s": (
            j["diffusers"]["budget_s"],
            "simdiff AE + diffusion wall time",
            None,
        ),
        **{
            f"peers.diffusers.{side}.lead{ld}.{k}": (v, "", None)
            for side in ("simdiff", "diffusers")
            for ld, e in j[side]["by_lead"].items()
            for k, v in e.items()
        },
    }


def nfe_figures(j: dict) -> dict:
    out = {"sampling.reference_crps": (j["reference"]["crps"], j["reference"]["point"], None)}
    for name, s in j["samplers"].items():
        goal = "<= 35" if name == "heun" else ""
        n = s["nfe_within_2pct"]
        out[f"sampling.{name}.nfe_within_2pct"] = (n, goal, (n is not None and n <= 35) if goal else None)
        out[f"sampling.{name}.members_per_s"] = (s["members_per_s"], "at nfe_within_2pct", None)
        both = s.get("nfe_within_2pct_with_spread")
        out[f"sampling.{name}.nfe_within_2pct_with_spread"] = (both, "CRPS and spread within 2 %", None)
        out[f"sampling.{name}.members_per_s_with_spread"] = (s.get("members_per_s_with_spread"), "", None)
    return out


def latent_pixel_figures(j: dict) -> dict:
    return {
        "diffusion.latent_vs_pixel_step_speedup": (j["ratio"], ">= 8 (4x4 down-sampling)", j["ratio"] >= 8),
        "diffusion.latent_vs_pixel_step_speedup_8x8": (j.get("ratio_8x8"), "(8x8 down-sampling)", None),
    }


def scaling_figures(j: dict) -> dict:
    """The fitted exponent over each axis, and the one between its two largest points (fixed costs
    flatten the small end, so the tail is the better guide to larger problems)."""
    out = {}
    for cost, axes in j["exponents"].items():
        for axis, e in axes.items():
            rows = [r for r in j["rows"] if r["cost"] == cost and r["axis"] == axis]
            pts = sorted((r["size"], r["seconds"]) for r in rows)
            (s0, t0), (s1, t1) = pts[-2], pts[-1]
            tail = round(math.log(t1 / t0) / math.log(s1 / s0), 3)
            out[f"scaling.{cost}.{axis}_exponent"] = (e, f"fit over {pts[0][0]:g}-{pts[-1][0]:g}", None)
            out[f"scaling.{cost}.{axis}_exponent_tail"] = (tail, f"{s0:g} to {s1:g}", None)
    return out


def evaluate_memory_figures(j: dict) -> dict:
    r = j["peak_rss_ratio"]
    return {
        "memory.evaluate.peak_rss_ratio": (r, f"<= 1.2 ({j['large']} vs {j['small']} cases)", r <= 1.2),
        "memory.evaluate.peak_rss_gb_small": (j["small_peak_rss_gb"], "", None),
        "memory.evaluate.peak_rss_gb_large": (j["large_peak_rss_gb"], "", None),
    }


def generate_figures(j: dict) -> dict:
    rows = j["rows"]
    return {
        "memory.generate.peak_rss_ratio": (
            j["rss_ratio"],
            f"<= 1.2 ({rows[-1]['members']} vs {rows[0]['members']} members)",
            j["rss_ratio"] <= 1.2,
        ),
        "speed.generate.members_per_s": (rows[-1]["members_per_s"], "", None),
    }


def prepare_figures(j: dict) -> dict:
    peak = max(j["peak_rss_mb_psutil"], j["peak_rss_mb_ru_maxrss"])
    goal = f"<= {j['goal_peak_rss_mb']:g} MB ({j['dataset']['gb']:.1f} GB of data)"
    return {
        "memory.prepare.peak_rss_mb": (round(peak), goal, j.get("pass")),
        "speed.prepare.mb_per_s": (round(j["throughput_mb_s"], 1), "", None),
    }


def gpu_figures(j: dict) -> dict:
    tag = "" if j["device"] == "cuda" else " (CPU check; GPU figures pending)"
    out = {}
    for label, t in j["training"].items():
        out[f"gpu.training.{label}.samples_per_s"] = (t["samples_per_s"], tag, None)
        if t.get("mfu") is not None:
            out[f"gpu.training.{label}.mfu"] = (t["mfu"], "", None)
        out[f"gpu.training.{label}.peak_memory_mb"] = (t["peak_memory_mb"], tag, None)
    for label, g in j["generation"].items():
        out[f"gpu.generation.{label}.members_per_s"] = (g["members_per_s"], tag, None)
        out[f"gpu.generation.{label}.peak_memory_mb"] = (g["peak_memory_mb"], tag, None)
    return out


def loader_figures(j: dict) -> dict:
    case = j["cases"][0]
    r = case["ratios"].get("ours_best / xbatcher_best")
    return {"speed.loader.vs_xbatcher": (r, f">= 5 ({case['case']})", None if r is None else r >= 5)}


def kill_figures(j: dict) -> dict:
    return {
        f"resume.{s['stage']}.identical_after_kill": (
            f"{s['identical_of_kills']}/{s['kills']}",
            "all",
            s["identical_of_kills"] == s["kills"],
        )
        for s in j["stages"]
    }


def _bench(
    name: str, script: str, quick: list[str], full: list[str], figures: Callable, needs_run: bool = False
) -> Bench:
    """``script`` (under benchmarks/) with its arguments in each mode; ``--out {part}`` unless given."""
    out = [] if "{part}" in quick else ["--out", "{part}"]
    path = str(REPO / "benchmarks" / script)
    return Bench(name, [PY, path, *quick, *out], [PY, path, *full, *out], figures, needs_run)


def benches() -> list[Bench]:
    gpu = [] if _cuda() else ["--cpu", "--quick"]
    run = ["--run-dir", "{run}"]
    return [
        _bench("peer", "peer_diffusers.py", ["--quick", "--keep", "{run}"], ["--keep", "{run}"],
               peer_figures),
        _bench("nfe", "nfe_curve.py", [*run, "--quick"], [*run, "--sweep"], nfe_figures, needs_run=True),
        _bench("latent_vs_pixel", "bench_latent_vs_pixel.py", ["--quick"], [], latent_pixel_figures),
        _bench("scaling", "bench_scaling.py", ["--quick"], [], scaling_figures),
        _bench("memory_evaluate", "bench_evaluate_memory.py", ["--quick"], [], evaluate_memory_figures),
        _bench("memory_generate", "bench_generate.py", [*run, "--small", "4", "--large", "40"], run,
               generate_figures, needs_run=True),
        _bench("memory_prepare", "bench_prepare_rss.py", ["--gb", "0.3"], [], prepare_figures),
        _bench("loader", "bench_loader.py", ["--quick"], [], loader_figures),
        _bench("resume", "kill_resume.py", ["--stage", "all", "--kills", "1", "--json", "{part}"],
               ["--stage", "all", "--kills", "20", "--json", "{part}"], kill_figures),
        _bench("gpu", "bench_gpu.py", ["--cpu", "--quick"], gpu, lambda j: gpu_figures(j["gpu"])),
    ]


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def _commit() -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def run_one(bench: Bench, quick: bool, parts: Path, run_dir: Path) -> dict[str, Any]:
    cmd = [
        a.replace("{part}", str(parts / f"{bench.name}.json")).replace("{run}", str(run_dir))
        for a in (bench.quick if quick else bench.full)
    ]
    shown = " ".join(Path(a).relative_to(REPO).as_posix() if a.startswith(str(REPO)) else a for a in cmd[1:])
    shown = "python " + shown.replace(str(run_dir), "RUN").replace(str(parts), "bench/parts")
    if bench.needs_run and not (run_dir / "diffusion" / "diffusion.ckpt").is_file():
        return {
            "command": shown,
            "ok": False,
            "error": f"needs the trained run {run_dir} (the peer benchmark "
            "trains it; run it first: --only peer," + bench.name + ")",
        }
    print(f"\n== {bench.name}: {shown}", flush=True)
    t0 = time.perf_counter()
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True, env=env)
    wall = round(time.perf_counter() - t0, 1)
    sys.stdout.write(done.stdout[-3000:])
    record = {
        "command": shown,
        "wall_s": wall,
        "ok": done.returncode == 0,
        "quick": quick,
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if done.returncode:
        record["error"] = (done.stdout + done.stderr)[-2000:]
        print(f"!! {bench.name} failed (exit {done.returncode}):\n{done.stderr[-2000:]}", flush=True)
    return record


def _latest(out_dir: Path, name: str) -> tuple[dict | None, Path | None]:
    """A benchmark's record and JSON: the full mode's if it succeeded, else the quick mode's."""
    fallback: tuple[dict | None, Path | None] = (None, None)
    for folder in ("parts", "parts-quick"):
        log_path = out_dir / folder / "runs.json"
        rec = json.loads(log_path.read_text()).get(name) if log_path.is_file() else None
        if rec is not None and rec.get("ok") and (out_dir / folder / f"{name}.json").is_file():
            return rec, out_dir / folder / f"{name}.json"
        if rec is not None and fallback[0] is None:
            fallback = (rec, None)
    return fallback


def gather(out_dir: Path, quick: bool) -> tuple[dict, list[str]]:
    """results.json from the parts on disk (each benchmark's full-mode JSON if it has one, else its
    quick one): headline figures, each benchmark's JSON and command."""
    results: dict[str, Any] = {
        "meta": {
            "commit": _commit(),
            "last_invocation": "quick" if quick else "full",
            "written": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": {
                "cpus": os.cpu_count(),
                "processor": platform.processor() or platform.machine(),
                "python": platform.python_version(),
            },
        },
        "figures": {},
        "benchmarks": {},
    }
    failed = []
    for bench in benches():
        rec, part = _latest(out_dir, bench.name)
        if rec is None or part is None:
            results["benchmarks"][bench.name] = rec or {"ok": False, "error": "not run"}
            if rec is not None and not rec.get("ok", False):
                failed.append(bench.name)
            continue
        data = json.loads(part.read_text())
        try:
            figures = bench.figures(data)
        except (KeyError, TypeError, ZeroDivisionError) as err:
            rec = {**rec, "ok": False, "error": f"its JSON lacks a figure: {type(err).__name__}: {err}"}
            failed.append(bench.name)
            figures = {}
        results["benchmarks"][bench.name] = {**rec, "result": data}
        plot = part.with_suffix(".png")
        if plot.is_file():  # a benchmark's plot goes beside RESULTS.md
            shutil.copyfile(plot, out_dir / f"{bench.name}.png")
            results["benchmarks"][bench.name]["plot"] = f"{bench.name}.png"
        for key, (value, goal, met) in figures.items():
            results["figures"][key] = {
                "value": value,
                "goal": goal,
                "met": met,
                "benchmark": bench.name,
                "quick": rec.get("quick"),
            }
    return results, failed


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [
        "# simdiff benchmarks",
        "",
        f"Written by `make bench` (`benchmarks/run_all.py`) at {meta['written']}, commit `{meta['commit']}`, "
        f"on {meta['machine']['cpus']} CPUs ({meta['machine']['processor']}), gathering each benchmark's "
        "latest full-mode result, or its quick-mode one where it has none. Figures marked *quick* come from "
        "the quick mode (`make bench ARGS=--quick`): small inputs that check the machinery, not the "
        "project's figures. Each figure with a peer is a ratio measured in one process. The commands are "
        "at the end.",
        "",
        "| figure | value | goal | met | benchmark |",
        "|---|---|---|---|---|",
    ]
    for key, f in results["figures"].items():
        value = f["value"]
        shown = "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
        met = {True: "yes", False: "**no**", None: ""}[f["met"]]
        lines.append(
            f"| `{key}` | {shown}{' *quick*' if f['quick'] else ''} | {f['goal']} | {met} | "
            f"{f['benchmark']} |"
        )
    plots = [(n, r["plot"]) for n, r in results["benchmarks"].items() if r.get("plot")]
    for name, path in plots:
        lines += ["", f"![{name}]({path})"]
    lines += ["", "## Commands", "", "| benchmark | command | wall s | status |", "|---|---|---|---|"]
    for name, rec in results["benchmarks"].items():
        status = "ok" if rec.get("ok") else f"failed: {str(rec.get('error', ''))[-160:]!r}".replace("|", "/")
        lines.append(f"| {name} | `{rec.get('command', '')}` | {rec.get('wall_s', '')} | {status} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small inputs: minutes")
    ap.add_argument("--only", default=None, help="comma-separated benchmark names")
    ap.add_argument("--gather", action="store_true", help="only rebuild results.json and RESULTS.md")
    ap.add_argument("--out-dir", default=str(REPO / "bench"))
    args = ap.parse_args()
    out_dir = Path(args.out_dir)
    parts = out_dir / ("parts-quick" if args.quick else "parts")
    parts.mkdir(parents=True, exist_ok=True)
    run_dir = out_dir / "runs" / ("qg-tiny" if args.quick else "qg")
    names = [b.name for b in benches()]
    only = names if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(only) - set(names))
    if unknown:
        print(f"run_all: --only {args.only}: unknown {unknown}; choose from {names}", file=sys.stderr)
        sys.exit(2)
    log_path = parts / "runs.json"
    log = json.loads(log_path.read_text()) if log_path.is_file() else {}
    if not args.gather:
        if "peer" in only and run_dir.exists():  # the peer benchmark trains simdiff afresh into run_dir
            subprocess.run(["rm", "-rf", str(run_dir)], check=True)
        for bench in benches():
            if bench.name in only:
                log[bench.name] = run_one(bench, args.quick, parts, run_dir)
                write_json(log, log_path)
    results, failed = gather(out_dir, args.quick)
    failed = [n for n in failed if n in only]
    previous = out_dir / "results.json"
    if previous.is_file() and not _cuda():  # keep the figures of an earlier GPU run
        old = json.loads(previous.read_text())
        gpu = {k: v for k, v in old.get("figures", {}).items() if k.startswith("gpu.") and not v.get("quick")}
        if _at(old, "benchmarks", "gpu", "result", "gpu", "device") == "cuda":
            results["figures"].update(gpu)
            results["benchmarks"]["gpu"] = old["benchmarks"]["gpu"]
    write_json(results, out_dir / "results.json")
    with atomic_file(out_dir / "RESULTS.md") as f:
        f.write(markdown(results))
    print(
        f"\n-> {out_dir / 'results.json'}, {out_dir / 'RESULTS.md'}"
        + (f"; failed: {failed}" if failed else "")
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
