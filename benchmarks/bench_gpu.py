"""GPU figures: training throughput and model FLOP utilisation in bf16, members/s, peak memory.

On a CUDA machine this measures, for the default denoiser (``conf/diffusion/default.yaml``,
levels folded into channels, one previous state as the forecast condition) and the default
autoencoder's decoder (``conf/autoencoder/default.yaml``, 4x4 down-sampling):

* training samples/s of the denoiser (EDM loss, backward, AdamW step) in bf16 autocast, on the
  latents of a 64x64 field (2 variables x 2 levels: 16x16 latents) and of a 256x256 one (64x64
  latents);
* model FLOP utilisation: the FLOPs of one training step (forward and backward, counted by
  ``torch.utils.flop_counter``) times steps/s, over the device's dense bf16 peak (a table of
  known devices, or ``--peak-tflops``);
* members/s of generation: the default sampler (Heun, 18 noise levels, 35 network calls per
  member) over a batch of members, then the decoder, for both field sizes;
* peak GPU memory of each (``torch.cuda.max_memory_allocated``).

Synthetic unit-variance inputs (cost does not depend on values). ``--cpu`` runs the same code on
the CPU with small batches and few steps, so the script is tested where there is no GPU; its
figures are then CPU figures and say so (``device``).

Run::

    .venv/bin/python benchmarks/bench_gpu.py                # a CUDA machine (make bench-gpu)
    .venv/bin/python benchmarks/bench_gpu.py --cpu --quick  # anywhere: checks the script runs

Prints a table and merges its figures into ``bench/results.json`` under ``gpu`` (written
atomically; other keys are kept).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_latent_vs_pixel import build, default_configs

from simdiff.base.atomic import write_json
from simdiff.diffusion.edm import EDMLoss
from simdiff.diffusion.samplers import sample_heun
from simdiff.diffusion.sampling import Sampling
from simdiff.nets.autoencoder import Autoencoder

REPO = Path(__file__).resolve().parents[1]
#: Dense bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets (SXM parts).
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.05}
FIELDS = {"64x64": (2, 2, 64, 64), "256x256": (2, 2, 256, 256)}


def peak_tflops(name: str, given: float | None) -> float | None:
    if given is not None:
        return given
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):  # "H100 PCIe" before "H100"
        if key in name:
            return PEAK_BF16_TFLOPS[key]
    return None


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def reset_memory(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else None


def training(latent: tuple[int, ...], net_cfg: dict, batch: int, steps: int, device: str,
             bf16: bool) -> dict:
    """Training samples/s, FLOPs per step and peak memory of the denoiser on ``latent``."""
    torch.manual_seed(0)
    model = build(latent, net_cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = EDMLoss()
    x = torch.randn(batch, *latent, device=device)
    prev = torch.randn(batch, 1, *latent, device=device)

    def step() -> None:
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = loss_fn(model, x, **model.conditions({"target": x, "previous": prev}))
        opt.zero_grad(set_to_none=True)
        loss.mean().backward()
        opt.step()

    reset_memory(device)
    with FlopCounterMode(display=False) as counter:
        step()
    flops = int(counter.get_total_flops())
    times = []
    for i in range(steps + 2):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        if i >= 2:  # warm-up
            times.append(time.perf_counter() - t0)
    times.sort()
    per_step = times[len(times) // 2]
    return {"batch": batch, "samples_per_s": round(batch / per_step, 2), "flops_per_step": flops,
            "achieved_tflops": round(flops / per_step / 1e12, 3), "peak_memory_mb": peak_memory_mb(device),
            "parameters": sum(p.numel() for p in model.parameters())}


def generation(field: tuple[int, ...], net_cfg: dict, ae_cfg: dict, members: int, steps: int,
               device: str, bf16: bool, repeats: int) -> dict:
    """Members/s of the default sampler plus the decoder for one field size."""
    c, d, h, w = field
    latent = (int(ae_cfg["latent_channels"]), d, h // 4, w // 4)
    torch.manual_seed(0)
    model = build(latent, net_cfg).to(device).eval()
    decoder = Autoencoder(c, (False, False, True), latent_channels=latent[0], channels=ae_cfg["channels"],
                          factors=ae_cfg["factors"], blocks=ae_cfg["blocks"], attention=False,
                          depth_kernel_size=ae_cfg["depth_kernel_size"]).to(device).eval()
    sampling = Sampling(sample_heun, steps=steps)
    sigmas = sampling.sigmas().to(device)
    prev = torch.randn(members, 1, *latent, device=device)
    cond = model.conditions({"previous": prev}, n=members)

    def draw() -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            x = torch.randn(members, *latent, device=device) * sigmas[0]
            z = sampling.sampler(lambda y, s: model(y, s, **cond), x, sigmas)
            return decoder.decode(z, (d, h, w))

    reset_memory(device)
    draw()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        draw()
        sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"members": members, "network_calls_per_member": 2 * steps - 1, "latent": list(latent),
            "members_per_s": round(members / times[len(times) // 2], 2),
            "peak_memory_mb": peak_memory_mb(device)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="run on the CPU (no GPU: checks the script)")
    ap.add_argument("--quick", action="store_true", help="small batches, few steps")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak")
    ap.add_argument("--out", default=str(REPO / "bench" / "results.json"))
    args = ap.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        sys.exit("bench_gpu: no CUDA device; run on a GPU machine, or with --cpu to check the script")
    device = "cpu" if args.cpu else "cuda"
    bf16 = device == "cuda"
    name = torch.cuda.get_device_name() if device == "cuda" else (platform.processor() or platform.machine())
    peak = peak_tflops(name, args.peak_tflops) if device == "cuda" else args.peak_tflops
    net_cfg, ae_cfg = default_configs()
    quick = args.quick or args.cpu
    train_rows, gen_rows = {}, {}
    for label, field in FIELDS.items():
        if args.cpu and label == "256x256" and args.quick:
            field = (2, 2, 128, 128)  # keep the CPU check short
        latent = (int(ae_cfg["latent_channels"]), field[1], field[2] // 4, field[3] // 4)
        batch = (4 if quick else 128) if field[2] <= 64 else (2 if quick else 32)
        train_rows[label] = training(latent, net_cfg, batch, 2 if quick else 20, device, bf16)
        if peak:
            train_rows[label]["mfu"] = round(train_rows[label]["achieved_tflops"] / peak, 4)
        gen_rows[label] = generation(field, net_cfg, ae_cfg, 2 if quick else 64, 4 if quick else 18, device,
                                     bf16, 1 if quick else 3)
        tr, ge = train_rows[label], gen_rows[label]
        mfu = f", MFU {tr['mfu']:.1%}" if peak else ""
        print(f"{label:>8}: training {tr['samples_per_s']:>9.1f} samples/s ({tr['achieved_tflops']:.2f} "
              f"TFLOP/s{mfu}, peak {tr['peak_memory_mb']} MB); generation {ge['members_per_s']:>8.2f} "
              f"members/s (peak {ge['peak_memory_mb']} MB)", flush=True)
    result = {"device": device, "name": name, "bf16": bf16, "peak_bf16_tflops": peak, "quick": quick,
              "torch": torch.__version__, "net": net_cfg, "autoencoder": ae_cfg,
              "training": train_rows, "generation": gen_rows,
              "pending": device != "cuda"}
    out = Path(args.out)
    merged = json.loads(out.read_text()) if out.is_file() else {}
    merged["gpu"] = result
    write_json(merged, out)
    print(f"-> {out} (gpu{'; CPU check only, GPU figures pending' if device != 'cuda' else ''})")


if __name__ == "__main__":
    main()
