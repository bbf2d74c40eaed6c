"""Training cost of the denoiser in latent space vs the same denoiser in pixel space.

The reason latent diffusion exists (Rombach et al. 2022): the autoencoder shrinks the field,
so each training step of the denoiser costs less. This measures training samples/s (forward,
EDM loss, backward, AdamW step) of the default denoiser (``conf/diffusion/default.yaml``:
UNet widths, blocks, attention, embedding; levels folded into channels) on

* latent 4x4: latents of 4x4 spatial down-sampling, (2 channels x 2 levels, 16 x 16),
* latent 8x8: latents of 8x8 spatial down-sampling, (2 channels x 2 levels, 8 x 8), and
* pixel: the QG fields themselves, (2 variables x 2 levels, 64 x 64),

with the same network at equal depth (same resolution levels, blocks and widths; only the
input grid differs), one previous state concatenated as the forecast condition, and the same
batch size. Synthetic unit-variance inputs (the cost does not depend on the values).

Run::

    .venv/bin/python benchmarks/bench_latent_vs_pixel.py [--batch 32] [--steps 8] [--device cpu|cuda]
    .venv/bin/python benchmarks/bench_latent_vs_pixel.py --quick     # batch 4, 2 timed steps

Prints a table and writes ``bench_results/latent_vs_pixel.json``: ``ratio`` (4x4) and
``ratio_8x8``, latent over pixel samples/s.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
import yaml

from simdiff.base.atomic import write_json
from simdiff.diffusion.denoiser import ConditionalDenoiser
from simdiff.diffusion.edm import EDMLoss
from simdiff.nets.conditioning import Conditioner
from simdiff.nets.fold import DepthAsChannels
from simdiff.nets.unet import UNet

REPO = Path(__file__).resolve().parents[1]


def build(shape: tuple[int, ...], net_cfg: dict) -> ConditionalDenoiser:
    c, d = shape[0], shape[1]
    cond = Conditioner(int(net_cfg["emb_dim"]), c, previous=1)
    kwargs = {k: v for k, v in net_cfg.items() if k != "_target_"}
    net = UNet(c * d, c * d, (True, True), cond_channels=cond.spatial_channels * d, **kwargs)
    return ConditionalDenoiser(DepthAsChannels(net, d), cond)


def default_configs() -> tuple[dict, dict]:
    """The default denoiser (``conf/diffusion/default.yaml``) and autoencoder
    (``conf/autoencoder/default.yaml``) nets, without the ``debug`` selections."""
    dm = yaml.safe_load((REPO / "conf" / "diffusion" / "default.yaml").read_text())["net"]
    net_cfg = {"channels": [64, 128, 128], "factors": dm["factors"], "blocks": 2,
               "attention": [False, False, True], "heads": dm["heads"], "emb_dim": 128,
               "kernel_size": dm["kernel_size"], "groups": dm["groups"]}
    ae = yaml.safe_load((REPO / "conf" / "autoencoder" / "default.yaml").read_text())["net"]
    ae_cfg = {"latent_channels": ae["latent_channels"], "channels": [16, 32, 64], "factors": ae["factors"],
              "blocks": 1, "depth_kernel_size": ae["depth_kernel_size"]}
    return net_cfg, ae_cfg


def samples_per_s(
    model: ConditionalDenoiser, shape: tuple[int, ...], batch: int, steps: int, device: str, bf16: bool
) -> float:
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = EDMLoss()
    x = torch.randn(batch, *shape, device=device)
    prev = torch.randn(batch, 1, *shape, device=device)
    times = []
    for i in range(steps + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = loss_fn(model, x, **model.conditions({"target": x, "previous": prev}))
        opt.zero_grad(set_to_none=True)
        loss.mean().backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # warm-up
            times.append(time.perf_counter() - t0)
    times.sort()
    return batch / times[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="batch 4 and 2 timed steps (a check, not a figure)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="bench_results/latent_vs_pixel.json")
    args = ap.parse_args()
    if args.quick:
        args.batch, args.steps = 4, 2
    net_cfg, _ = default_configs()
    bf16 = args.device == "cuda"
    rows = []
    for name, shape in (
        ("latent 4x4", (2, 2, 16, 16)),
        ("latent 8x8", (2, 2, 8, 8)),
        ("pixel", (2, 2, 64, 64)),
    ):
        torch.manual_seed(0)
        model = build(shape, net_cfg)
        rate = samples_per_s(model, shape, args.batch, args.steps, args.device, bf16)
        rows.append(
            {
                "space": name,
                "shape": list(shape),
                "elements": int(torch.tensor(shape).prod()),
                "samples_per_s": round(rate, 2),
            }
        )
    ratio = rows[0]["samples_per_s"] / rows[2]["samples_per_s"]
    ratio8 = rows[1]["samples_per_s"] / rows[2]["samples_per_s"]
    print(
        f"denoiser {net_cfg['channels']} x {net_cfg['blocks']} blocks, batch {args.batch}, "
        f"{args.device}{' bf16' if bf16 else ''}, torch threads {torch.get_num_threads()}"
    )
    print(f"{'space':<12}{'shape (C, D, H, W)':<22}{'elements':>10}{'samples/s':>12}")
    for r in rows:
        print(f"{r['space']:<12}{tuple(r['shape'])!s:<22}{r['elements']:>10}{r['samples_per_s']:>12.1f}")
    print(f"latent / pixel training throughput: {ratio:.1f}x at 4x4 down-sampling, {ratio8:.1f}x at 8x8")
    write_json(
        {
            "device": args.device,
            "platform": platform.processor() or platform.machine(),
            "batch": args.batch,
            "net": net_cfg,
            "rows": rows,
            "ratio": round(ratio, 2),
            "ratio_8x8": round(ratio8, 2),
            "quick": args.quick,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
