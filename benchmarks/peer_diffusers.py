"""simdiff beside what most people would reach for: a pixel-space ``diffusers`` UNet, same data, same budget.

The peer is a ``diffusers.UNet2DModel`` trained in pixel space with the EDM preconditioning of
``diffusers.EDMDPMSolverMultistepScheduler`` (Karras et al. 2022: c_in, c_noise, c_skip, c_out;
log-normal noise levels, P_mean -1.2, P_std 1.2; loss weight (sigma^2 + sigma_data^2) /
(sigma sigma_data)^2) and sampled with that scheduler (DPM-Solver++(2M), Karras noise levels).
It is conditioned as simdiff's QG model is: the previous state's levels and variables enter as
extra input channels, the target is the next state's tendency x_{t+1} - x_t in units of its
per-channel training standard deviation, and forecasts roll out one lead at a time.

Both sides are trained in the same invocation on the same machine: simdiff by ``simdiff run``
(unless ``--run-dir`` names a trained run), the peer for the wall time simdiff's autoencoder and
latent diffusion model took together (``--budget-s`` to set it). Both then forecast the same
test inits, members and leads with 10 DPM-Solver++(2M) steps (the QG preset took 10 when this
was measured; it now takes 20, `--steps`), and both
forecasts are scored by simdiff's own evaluate (:meth:`simdiff.runs.api.Run.evaluate`): CRPS,
spread-skill, rank histograms and spectra per variable, level and lead.

    python benchmarks/peer_diffusers.py                          # the default main job (QG), ~30 min
    python benchmarks/peer_diffusers.py --quick                  # debug=tiny, ~2 min
    python benchmarks/peer_diffusers.py --run-dir runs/qg        # a trained run; budget from its logs

Prints a table and writes ``bench_results/peer_diffusers.json`` (``--out``): ``crps_ratio`` is
simdiff CRPS / peer CRPS averaged over variables, levels and leads (below 1: simdiff better),
``members_per_s_ratio`` simdiff's forecast fields per second over the peer's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_main_job import simdiff_run, stage_times  # noqa: E402
from nfe_curve import lead_means, spaced_inits, timed_forecast  # noqa: E402

from simdiff.base.atomic import write_json  # noqa: E402
from simdiff.data.loading.loader import window_targets  # noqa: E402
from simdiff.data.stores.training import SPLITS  # noqa: E402
from simdiff.diffusion.samplers.dpmpp_2m import sample_dpmpp_2m  # noqa: E402
from simdiff.runs.api import open_run  # noqa: E402
from simdiff.runs.modes import Forecast  # noqa: E402

P_MEAN, P_STD, SIGMA_DATA = -1.2, 1.2, 1.0


def logged_stages(run_dir: Path) -> dict[str, float]:
    """Stage wall times from the newest ``logs/run/*/run.log`` of a run made by ``simdiff run``."""
    logs = sorted((run_dir / "logs" / "run").glob("*/run.log"))
    if not logs:
        sys.exit(f"peer_diffusers: {run_dir}/logs/run/*/run.log not found; pass --budget-s")
    return stage_times(logs[-1].read_text())


def folded(data: np.ndarray) -> np.ndarray:
    """``(S, C, [D], Y, X)`` -> ``(S, C*D, Y, X)``: levels and variables as image channels."""
    return data.reshape(data.shape[0], -1, *data.shape[-2:])


def peer_net(channels: int, size: int, widths: tuple[int, ...]) -> torch.nn.Module:
    from diffusers import UNet2DModel

    n = len(widths)
    return UNet2DModel(
        sample_size=size,
        in_channels=2 * channels,
        out_channels=channels,
        block_out_channels=widths,
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * (n - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (n - 1),
        norm_num_groups=8,
    )


def denoise(net, scheduler, noisy: torch.Tensor, cond: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """EDM-preconditioned denoiser D(x; sigma) from the scheduler's own c_in, c_noise, c_skip, c_out."""
    inputs = torch.cat([scheduler.precondition_inputs(noisy, sigma), cond], dim=1)
    out = net(inputs, scheduler.precondition_noise(sigma).reshape(-1)).sample
    return scheduler.precondition_outputs(noisy, out, sigma)


def train_peer(
    net,
    scheduler,
    x: np.ndarray,
    targets: np.ndarray,
    scale: np.ndarray,
    budget_s: float,
    batch: int,
    lr: float,
    seed: int,
) -> dict[str, float]:
    """Train for ``budget_s`` seconds of wall time on pairs (x[t-1] -> x[t]) for t in ``targets``."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    data = torch.from_numpy(x)
    s = torch.from_numpy(scale)[None, :, None, None]
    steps, seen, losses = 0, 0, []
    net.train()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < budget_s:
        pick = torch.from_numpy(targets)[torch.randint(len(targets), (batch,), generator=gen)]
        prev, nxt = data[pick - 1], data[pick]
        y = (nxt - prev) / s
        sigma = (torch.randn(batch, 1, 1, 1, generator=gen) * P_STD + P_MEAN).exp()
        noisy = y + sigma * torch.randn(y.shape, generator=gen)
        weight = (sigma**2 + SIGMA_DATA**2) / (sigma * SIGMA_DATA) ** 2
        loss = (weight * (denoise(net, scheduler, noisy, prev, sigma) - y) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps, seen = steps + 1, seen + batch
        losses.append(float(loss.detach()))
    wall = time.perf_counter() - t0
    net.eval()
    return {
        "steps": steps,
        "wall_s": round(wall, 1),
        "samples_per_s": round(seen / wall, 2),
        "final_loss": float(np.mean(losses[-50:])) if losses else None,
    }


class PeerForecast(Forecast):
    """simdiff's forecast mode with the peer's pixel-space rollout in place of the latent one, so
    its output is labelled, de-normalised and masked by the same code as simdiff's."""

    def __init__(
        self, net, scheduler_config: dict, x: np.ndarray, scale: np.ndarray, steps: int, **kw
    ) -> None:
        super().__init__(**kw)
        self.net, self.config, self.x, self.scale, self.steps = net, scheduler_config, x, scale, steps

    @torch.no_grad()
    def compute(self, gen, init: int, members: list[int]):
        from diffusers import EDMDPMSolverMultistepScheduler

        leads = int(self.lead_steps)
        shape = self.x.shape[1:]
        state = torch.from_numpy(self.x[init]).expand(len(members), *shape).clone()
        s = torch.from_numpy(self.scale)[None, :, None, None]
        g = torch.Generator().manual_seed(gen.seed * 100003 + init)
        out = []
        for _ in range(leads):
            sched = EDMDPMSolverMultistepScheduler.from_config(self.config)
            sched.set_timesteps(self.steps)
            y = torch.randn(state.shape, generator=g) * sched.init_noise_sigma
            for t in sched.timesteps:
                inputs = torch.cat([sched.scale_model_input(y, t), state], dim=1)
                y = sched.step(self.net(inputs, t.reshape(1).expand(len(members))).sample, t, y).prev_sample
            state = state + y * s
            out.append(state.numpy())
        fields = np.stack(out, axis=1).reshape(len(members), leads, *gen.store.data.shape[1:])
        rows = np.broadcast_to(np.arange(init + 1, init + leads + 1), (len(members), leads))
        return gen.physical(
            fields, members, ("realization", "lead_time", "channel", *gen.store.layout.spatial_dims), rows
        )


#: Per-lead scores of each side, averaged over variables and levels (see ``summary``).
SCORES = {
    "crps_vs_clim": lambda e: e["crps"] / e["crps_climatology"] if e.get("crps_climatology") else None,
    "spread_skill": lambda e: e["spread_skill"],
    "spectrum_ratio": lambda e: e.get("spectrum_ratio"),
    # the rank histogram's edge mass over a flat one's (1 flat, > 1 under-dispersed)
    "rank_edges": lambda e: (e["rank_histogram"][0] + e["rank_histogram"][-1]) * len(e["rank_histogram"]) / 2,
}


def summary(metrics: dict) -> dict:
    """Per lead, means over variables and levels of ``SCORES`` (those a side has), to 4 digits."""
    return {
        lead: {k: round(v, 4) for k, v in cell.items() if v is not None}
        for lead, cell in lead_means(metrics, SCORES).items()
    }


def crps_ratio(ours: dict, peer: dict) -> dict:
    """simdiff CRPS / peer CRPS per (variable, lead) and their mean."""
    per = {}
    for key, entry in ours["variables"].items():
        for lead, e in entry["by_lead"].items():
            per[f"{key}/{lead}"] = e["crps"] / peer["variables"][key]["by_lead"][lead]["crps"]
    return {"mean": round(float(np.mean(list(per.values()))), 4), "per_variable_lead": per}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for the simdiff run it trains")
    ap.add_argument("--quick", action="store_true", help="debug=tiny on both sides: minutes, not a figure")
    ap.add_argument(
        "--run-dir", default=None, help="a trained simdiff run to compare (skips training simdiff)"
    )
    ap.add_argument(
        "--keep", default=None, help="train simdiff into this run_dir and keep it (default: a temp dir)"
    )
    ap.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="peer training wall time (default: simdiff's train-autoencoder + train-diffusion)",
    )
    ap.add_argument("--inits", type=int, default=10)
    ap.add_argument("--members", type=int, default=10)
    ap.add_argument("--lead-steps", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10, help="DPM-Solver++(2M) steps on both sides")
    ap.add_argument("--widths", default="32,64,64,128", help="the peer UNet's block widths")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "bench_results" / "peer_diffusers.json"))
    args = ap.parse_args()
    try:
        from diffusers import EDMDPMSolverMultistepScheduler
    except ImportError:
        sys.exit("peer_diffusers: diffusers is not installed; `pip install -e .[bench]`")
    overrides = [*args.overrides, *(["debug=tiny"] if args.quick else [])]
    if args.quick:
        args.inits, args.members, args.lead_steps, args.widths = 3, 4, 2, "8,16"

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(args.seed)
        if args.run_dir:
            run_dir, stages = (
                Path(args.run_dir),
                logged_stages(Path(args.run_dir)) if args.budget_s is None else {},
            )
        else:
            run_dir = Path(args.keep) if args.keep else Path(tmp) / "run"
            print(f"training simdiff: simdiff run {' '.join(overrides)}", flush=True)
            stages, _ = simdiff_run(run_dir, overrides, "peer_diffusers")
        simdiff_train_s = sum(stages.get(k, 0.0) for k in ("train-autoencoder", "train-diffusion"))
        budget = args.budget_s if args.budget_s is not None else simdiff_train_s
        run = open_run(run_dir)
        store = run.store
        x = folded(np.asarray(store.data[...], dtype=np.float32))
        split, block = store.split, store.array("block")
        targets = window_targets(split, block, SPLITS["train"], 2)
        scale = (x[targets] - x[targets - 1]).std(axis=(0, 2, 3))
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        widths = tuple(int(w) for w in args.widths.split(","))
        net = peer_net(x.shape[1], x.shape[-1], widths)
        scheduler = EDMDPMSolverMultistepScheduler(
            sigma_data=SIGMA_DATA,
            sigma_min=0.002,
            sigma_max=80.0,
            algorithm_type="dpmsolver++",
            solver_order=2,
        )
        n_params = sum(p.numel() for p in net.parameters())
        print(f"training the peer: UNet2DModel {widths}, {n_params} parameters, {budget:.0f} s", flush=True)
        peer_train = train_peer(net, scheduler, x, targets, scale, budget, args.batch, args.lr, args.seed)

        inits = spaced_inits(run, args.inits, args.lead_steps)
        fields = len(inits) * args.members * args.lead_steps
        ours_fc, ours_s = timed_forecast(
            run, inits, args.members, args.lead_steps, args.seed, sample_dpmpp_2m, args.steps
        )
        gen = run._generation(args.members, args.seed, False, 0, 16)
        mode = PeerForecast(
            net, dict(scheduler.config), x, scale, args.steps, init_indices=inits, lead_steps=args.lead_steps
        )
        t0 = time.perf_counter()
        from simdiff.runs.api import _fill

        peer_fc = run._labelled(_fill(mode, gen, [(m, i) for i in inits for m in gen.members]), gen)
        peer_s = time.perf_counter() - t0
        scoring = {"diurnal": False, "ae_ceiling": False}
        ours = run.evaluate(ours_fc, seed=args.seed, **scoring)
        peer = run.evaluate(peer_fc, seed=args.seed, **scoring)
        summary_json = json.loads((run_dir / "diffusion" / "train_summary.json").read_text())

    ratio = crps_ratio(ours, peer)
    result = {
        "command": " ".join(["python benchmarks/peer_diffusers.py", *sys.argv[1:]]),
        "data": "qg",
        "quick": bool(args.quick),
        "inits": [int(i) for i in inits],
        "members": args.members,
        "lead_steps": args.lead_steps,
        "sampler_steps": args.steps,
        "torch_threads": torch.get_num_threads(),
        "crps_ratio": ratio["mean"],
        "crps_ratio_per_variable_lead": ratio["per_variable_lead"],
        "members_per_s_ratio": round((fields / ours_s) / (fields / peer_s), 3),
        "simdiff": {
            "train_s": round(simdiff_train_s, 1),
            "stages_s": stages,
            "diffusion_samples_per_s": summary_json.get("samples_per_s"),
            "diffusion_parameters": summary_json.get("parameters"),
            "forecast_s": round(ours_s, 1),
            "members_per_s": round(fields / ours_s, 3),
            "by_lead": summary(ours),
        },
        "diffusers": {
            "net": f"UNet2DModel {list(widths)}, 1 layer per block, attention at the coarsest",
            "parameters": n_params,
            "budget_s": round(budget, 1),
            **peer_train,
            "forecast_s": round(peer_s, 1),
            "members_per_s": round(fields / peer_s, 3),
            "by_lead": summary(peer),
        },
    }
    print(
        f"simdiff vs diffusers (pixel space) on QG: {len(inits)} inits x {args.members} members x "
        f"{args.lead_steps} leads, {args.steps} DPM-Solver++(2M) steps each"
    )
    print(
        f"{'':<10}{'train s':>9}{'steps':>7}{'samp/s':>8}{'fields/s':>10}  per lead: CRPS/clim, "
        "spread-skill, "
        "rank edges, spectrum ratio"
    )
    for name, side, train in (
        ("simdiff", result["simdiff"], (simdiff_train_s, None, summary_json.get("samples_per_s"))),
        (
            "diffusers",
            result["diffusers"],
            (peer_train["wall_s"], peer_train["steps"], peer_train["samples_per_s"]),
        ),
    ):
        leads = "  ".join(
            f"{ld}: {e['crps_vs_clim']:.3f} {e['spread_skill']:.2f} {e['rank_edges']:.2f} "
            f"{e.get('spectrum_ratio', float('nan')):.2f}"
            for ld, e in side["by_lead"].items()
        )
        print(
            f"{name:<10}{train[0]:>9.0f}{train[1] if train[1] is not None else '-':>7}{train[2]:>8.1f}"
            f"{side['members_per_s']:>10.2f}  {leads}"
        )
    print(
        f"crps_ratio (simdiff / diffusers) {ratio['mean']:.3f}; "
        f"members/s ratio {result['members_per_s_ratio']:.2f}"
    )
    write_json(result, args.out)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
