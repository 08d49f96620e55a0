"""BeatsModel inference speed against the floor of its own architecture, eager against sdpa, and peak memory.

The floor is the same computation without the parts specific to BEATs' attention: the model's own patch embedding,
convolutional position embedding and post-LN DeepNorm layers (same weights), with plain
`F.scaled_dot_product_attention` and one additive bias of the same shape `(batch, heads, patches, patches)` computed
once before timing, so no bucketing and no per-layer gate. BeatsModel should stay within 1.10x of it.

    python benchmarks/inference.py [--threads 2] [--repeats 5] [--batch 4] [--seconds 10] [--profile]
"""

import sys

import torch
import torch.nn.functional as F
from common import (
    base_parser,
    machine_description,
    measure_peak_memory,
    memory_in_subprocess,
    paired_ratio,
    print_memory_result,
    print_table,
    set_threads,
    summarize,
    time_alternating,
    write_results,
)
from torch import nn

from beats_hf import BeatsConfig, BeatsModel

VARIANTS = ("floor", "sdpa", "sdpa_with_mask", "eager")


class FloorModel(nn.Module):
    """BEATs' encoder computation with a fixed precomputed attention bias instead of buckets and gates."""

    def __init__(self, model: BeatsModel, bias: torch.Tensor):
        super().__init__()
        config = model.config
        if config.layer_norm_first:
            raise ValueError("The floor model implements the released post-LN layers only.")
        self.patch_embeddings = model.patch_embeddings
        self.pos_conv_embed = model.encoder.pos_conv_embed
        self.layer_norm = model.encoder.layer_norm
        self.layers = model.encoder.layers
        self.num_heads = config.num_attention_heads
        self.residual_scale = (2.0 * config.num_hidden_layers) ** 0.25 if config.deep_norm else 1.0
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        hidden = self.patch_embeddings(input_features)
        hidden = self.layer_norm(hidden + self.pos_conv_embed(hidden))
        batch_size, length, width = hidden.shape
        shape = (batch_size, length, self.num_heads, width // self.num_heads)
        for layer in self.layers:
            attention = layer.self_attn
            query = attention.q_proj(hidden).view(shape).transpose(1, 2)
            key = attention.k_proj(hidden).view(shape).transpose(1, 2)
            value = attention.v_proj(hidden).view(shape).transpose(1, 2)
            context = F.scaled_dot_product_attention(query, key, value, attn_mask=self.bias, scale=attention.scaling)
            context = attention.out_proj(context.transpose(1, 2).reshape(batch_size, length, width))
            hidden = layer.self_attn_layer_norm(hidden * self.residual_scale + context)
            feed_forward = layer.feed_forward
            feed_forward_output = feed_forward.fc2(F.gelu(feed_forward.fc1(hidden)))
            hidden = layer.final_layer_norm(hidden * self.residual_scale + feed_forward_output)
        return hidden


def position_bias(model: BeatsModel, batch_size: int, num_patches: int) -> torch.Tensor:
    """The model's own (ungated) relative position bias, materialised as a contiguous `(B, H, P, P)` tensor."""
    ids = torch.arange(num_patches)[None]
    with torch.inference_mode():
        bias = model.encoder.relative_position_bias(ids)
    return bias.expand(batch_size, -1, -1, -1).contiguous()


def check_floor_is_the_same_computation() -> float:
    """On a tiny model without the gate the floor must reproduce BeatsModel: returns the max abs difference."""
    torch.manual_seed(0)
    config = BeatsConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, patch_embedding_dim=48,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, gated_relative_position_bias=False,
    )
    config._attn_implementation = "sdpa"
    model = BeatsModel(config).eval()
    features = torch.randn(2, 160, 128)
    floor = FloorModel(model, position_bias(model, 2, 80))
    with torch.inference_mode():
        return (model(features).last_hidden_state - floor(features)).abs().max().item()


def build(variant: str, batch_size: int, seconds: float):
    """(callable running one forward, description) for a variant of the base model."""
    torch.manual_seed(0)
    config = BeatsConfig()
    config._attn_implementation = "eager" if variant == "eager" else "sdpa"
    model = BeatsModel(config).eval()
    num_frames = 1 + (int(seconds * 16000) - 400) // 160
    features = torch.randn(batch_size, num_frames, config.num_mel_bins, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(batch_size, num_frames, dtype=torch.int32)
    if variant == "floor":
        num_patches = num_frames // config.patch_size * config.num_frequency_patches
        floor = FloorModel(model, position_bias(model, batch_size, num_patches)).eval()

        def run():
            with torch.inference_mode():
                return floor(features)

    elif variant == "sdpa_with_mask":

        def run():
            with torch.inference_mode():
                return model(features, attention_mask=mask).last_hidden_state

    else:

        def run():
            with torch.inference_mode():
                return model(features).last_hidden_state

    return run, model


def profile(runs: dict, top: int = 14) -> dict[str, list[dict]]:
    """Self CPU time per aten op of one forward of each variant."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    tables = {}
    for name, run in runs.items():
        run()
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        events = sorted(prof.key_averages(), key=lambda event: event.self_cpu_time_total, reverse=True)
        total = sum(event.self_cpu_time_total for event in events)
        tables[name] = [
            {"op": event.key, "calls": event.count, "self_ms": round(event.self_cpu_time_total / 1000, 1),
             "share": round(event.self_cpu_time_total / total, 3)}
            for event in events[:top]
        ]
        tables[name].append({"op": "TOTAL", "calls": "", "self_ms": round(total / 1000, 1), "share": 1.0})
    return tables


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--profile", action="store_true", help="also profile one forward of sdpa and floor")
    args = parser.parse_args()
    set_threads(args.threads)

    if args.memory_variant:
        run, _ = build(args.memory_variant, args.batch, args.seconds)
        print_memory_result(measure_peak_memory(run))
        return 0

    floor_difference = check_floor_is_the_same_computation()
    print(f"floor check (tiny model, no gate): max |BeatsModel - floor| = {floor_difference:.2e}")

    runs, models = {}, {}
    for variant in VARIANTS:
        runs[variant], models[variant] = build(variant, args.batch, args.seconds)
    # All variants share one set of weights, so that only the attention path differs.
    state = models["sdpa"].state_dict()
    for variant in VARIANTS:
        models[variant].load_state_dict(state)
    with torch.inference_mode():
        reference = runs["sdpa"]()
        eager_difference = (runs["eager"]() - reference).abs().max().item()
        mask_difference = (runs["sdpa_with_mask"]() - reference).abs().max().item()

    times, cpu_times = time_alternating(runs, repeats=args.repeats, warmup=args.warmup)
    floor_min = min(times["floor"])
    rows = []
    for variant in VARIANTS:
        stats = summarize(times[variant])
        rows.append({"variant": variant, **stats, "paired_vs_floor": paired_ratio(times, variant, "floor"),
                     "min_vs_floor": stats["min_s"] / floor_min,
                     "cpu_paired_vs_floor": paired_ratio(cpu_times, variant, "floor"),
                     "cpu_runs_s": [round(value, 3) for value in cpu_times[variant]]})
    memory = {}
    if not args.no_memory:
        extra = ["--threads", str(args.threads), "--batch", str(args.batch), "--seconds", str(args.seconds)]
        for variant in VARIANTS:
            memory[variant] = memory_in_subprocess(__file__, variant, extra)
            rows[VARIANTS.index(variant)].update(memory[variant])

    title = f"BeatsModel base, {args.batch} x {args.seconds:g} s, fp32, {args.threads} threads"
    columns = ["variant", "median_s", "min_s", "paired_vs_floor", "min_vs_floor", "cpu_paired_vs_floor", "peak_mb",
               "increment_mb"]
    print_table(rows, columns, title)
    print(f"max |eager - sdpa| = {eager_difference:.2e}, max |sdpa with all-ones mask - sdpa| = {mask_difference:.2e}")

    payload = {
        "machine": machine_description(args.threads),
        "setup": {"batch": args.batch, "seconds": args.seconds, "dtype": "float32", "mode": "inference_mode",
                  "repeats": args.repeats, "warmup": args.warmup, "config": "BeatsConfig() defaults (base)"},
        "rows": rows,
        "checks": {"floor_vs_ungated_model_max_abs": floor_difference, "eager_vs_sdpa_max_abs": eager_difference,
                   "mask_vs_nomask_max_abs": mask_difference},
        "goal": {"sdpa_vs_floor_max": 1.10, "sdpa_paired_vs_floor": rows[1]["paired_vs_floor"],
                 "sdpa_min_vs_floor": rows[1]["min_vs_floor"], "met": rows[1]["paired_vs_floor"] <= 1.10},
    }
    if args.profile:
        tables = profile({"sdpa": runs["sdpa"], "sdpa_with_mask": runs["sdpa_with_mask"], "floor": runs["floor"]})
        for name, table in tables.items():
            print_table(table, ["op", "calls", "self_ms", "share"], f"profile: {name} (one forward, self CPU time)")
        payload["profile"] = tables
    path = write_results("inference", payload, args.output)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
