"""Benchmark: what weak-layer fine-tuning costs against full fine-tuning.

One training step (forward + backward + AdamW) of a realistic-width Wan block stack on
the CPU: Wan-1.3B width (1536, 12 heads, FFN 8960), 4 blocks, a 16x16x5 latent grid
(1,280 visual tokens) and 512 text tokens, fp32.  Variants:

  weak   the cross-attention (attn2) of 2 of the 4 blocks trains (what `layerscope
         finetune` does; the paper trains 16 of 40 layers' cross-attention)
  full   every transformer parameter trains

Each variant runs in its own process, so peak memory (ru_maxrss) is its own; step time
is the median of the timed steps after one warm-up.  Printed as a table, written as JSON.

    python benchmarks/finetune_cost.py [--steps 3] [--json benchmarks/results/finetune_cost.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from _common import print_table, summary, write_json

CONFIG = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 12,
    "attention_head_dim": 128,
    "in_channels": 36,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 8960,
    "num_layers": 4,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "image_dim": 1280,
    "added_kv_proj_dim": 1536,
    "rope_max_seq_len": 1024,
}
WEAK = (1, 2)


def run_variant(variant: str, steps: int) -> dict:
    import torch
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    model = WanTransformer3DModel(**CONFIG)
    model.requires_grad_(variant == "full")
    if variant == "weak":
        for name, param in model.named_parameters():
            if name.startswith(tuple(f"blocks.{layer}.attn2." for layer in WEAK)):
                param.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    latents = torch.randn(1, 36, 5, 32, 32)
    text = torch.randn(1, 512, 4096)
    image = torch.randn(1, 257, 1280)
    times = []
    for step in range(steps + 1):
        started = time.perf_counter()
        out = model(hidden_states=latents, timestep=torch.tensor([500.0]), encoder_hidden_states=text,
                    encoder_hidden_states_image=image, return_dict=False)[0]  # fmt: skip
        out.float().pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:
            times.append(time.perf_counter() - started)
    total = sum(p.numel() for p in model.parameters())
    return {
        "step_s": summary(times),
        "trainable": sum(p.numel() for p in params),
        "parameters": total,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", default="benchmarks/results/finetune_cost.json")
    parser.add_argument("--variant", choices=("weak", "full"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:  # the child process
        print(json.dumps(run_variant(args.variant, args.steps)))
        return 0
    results = {}
    for variant in ("weak", "full"):
        done = subprocess.run([sys.executable, __file__, "--variant", variant, "--steps", str(args.steps)],
                              capture_output=True, text=True, check=True)  # fmt: skip
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    weak, full = results["weak"], results["full"]
    ratio = weak["step_s"]["median"] / full["step_s"]["median"]
    print_table(
        ("variant", "trainable parameters", "share", "step time", "peak RSS"),
        [
            (name, f"{r['trainable']:,}", f"{100 * r['trainable'] / r['parameters']:.2f}%",
             "{median:.2f} s (min {min:.2f}, max {max:.2f})".format(**r["step_s"]), f"{r['peak_rss_mib']:,.0f} MiB")
            for name, r in results.items()
        ],
    )  # fmt: skip
    print(f"weak / full step time: {ratio:.2f}x; peak RSS {weak['peak_rss_mib'] / full['peak_rss_mib']:.2f}x")
    write_json({**results, "step_time_ratio": ratio, "config": CONFIG, "weak_layers": list(WEAK)}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
