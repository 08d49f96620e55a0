"""bfloat16 inference: speed of the base model and accuracy on the fine-tuned tiny reference checkpoint.

Speed: BeatsModel base (sdpa) on 4 x 10 s, fp32 against `torch.autocast("cpu", torch.bfloat16)` and against weights
cast to bfloat16 (`model.to(torch.bfloat16)`), timed alternately in one process. Goal: autocast <= 0.5x fp32. The
floor of `inference.py` runs alongside, in fp32 and under autocast (its ratio is against its own fp32 time): the best
ratio the architecture reaches on the machine.
Accuracy: the official-format fine-tuned tiny checkpoint (tests/fixtures/official_tiny) on its reference clips:
probabilities (sigmoid of the logits) within 1e-2 of fp32 and the same top-1 label. Its position convolution has 4
channels per group, where torch 2.13's oneDNN bf16 grouped conv1d is wrong on some CPUs (Intel AVX-512/AMX): beats_hf
runs it in float32 there, and the `autocast_bf16_unguarded` row shows what that guard is worth on this CPU. The script
ends by stating the largest probability difference and the CPU. On a GPU (when `torch.cuda.is_available()`) the same
comparisons run on `cuda` as well.

    python benchmarks/bf16.py [--threads 2] [--repeats 5] [--accuracy-only]
"""

import copy
import sys

import torch
from common import (
    REPO_ROOT,
    base_parser,
    machine_description,
    paired_ratio,
    print_table,
    set_threads,
    summarize,
    time_alternating,
    write_results,
)
from inference import FloorModel, position_bias

from beats_hf import BeatsConfig, BeatsFeatureExtractor, BeatsModel

TINY = REPO_ROOT / "tests" / "fixtures" / "official_tiny"


def speed(device: str, batch: int, seconds: float, repeats: int, warmup: int) -> list[dict]:
    torch.manual_seed(0)
    config = BeatsConfig()
    config._attn_implementation = "sdpa"
    model = BeatsModel(config).eval().to(device)
    bf16_model = copy.deepcopy(model).to(torch.bfloat16)
    num_frames = 1 + (int(seconds * 16000) - 400) // 160
    features = torch.randn(batch, num_frames, 128, generator=torch.Generator().manual_seed(1)).to(device)
    bf16_features = features.to(torch.bfloat16)
    floor = FloorModel(model, position_bias(model, batch, num_frames // 16 * 8).to(device)).eval()

    def fp32():
        with torch.inference_mode():
            return model(features).last_hidden_state

    def autocast():
        with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16):
            return model(features).last_hidden_state

    def bf16_weights():
        with torch.inference_mode():
            return bf16_model(bf16_features).last_hidden_state

    def floor_fp32():
        with torch.inference_mode():
            return floor(features)

    def floor_autocast():
        with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16):
            return floor(features)

    runs = {"fp32": fp32, "autocast_bf16": autocast, "bf16_weights": bf16_weights, "floor_fp32": floor_fp32,
            "floor_autocast_bf16": floor_autocast}
    reference = fp32()
    differences = {name: (runs[name]().float() - reference).abs().max().item() for name in list(runs)[:3]}
    times, cpu_times = time_alternating(runs, repeats=repeats, warmup=warmup)
    rows = []
    for name in runs:
        stats = summarize(times[name])
        # The floor under autocast is compared with the floor in fp32: the best ratio this architecture can reach.
        base = "floor_fp32" if name.startswith("floor") else "fp32"
        rows.append({"device": device, "variant": name, **stats, "paired_vs_fp32": paired_ratio(times, name, base),
                     "min_vs_fp32": stats["min_s"] / min(times[base]),
                     "cpu_paired_vs_fp32": paired_ratio(cpu_times, name, base),
                     "max_abs_diff": differences.get(name, float("nan"))})
    return rows


def reference_model():
    from conversion.beats_conversion import convert_checkpoint

    return convert_checkpoint(torch.load(TINY / "tiny_finetuned.pt", weights_only=True)).eval()


def accuracy(device: str) -> tuple[list[dict], dict]:
    model = reference_model().to(device)
    bf16_model = copy.deepcopy(model).to(torch.bfloat16)
    unguarded = copy.deepcopy(model)
    unguarded.beats.encoder.pos_conv_embed.float32_only = False
    feature_extractor = BeatsFeatureExtractor()
    clips = [clip[0] for clip in torch.load(TINY / "inputs.pt", weights_only=True)["individual_waveforms"]]
    cases = {f"clip_{index}": [clip] for index, clip in enumerate(clips)}
    cases["padded_batch"] = clips
    variants = ("autocast_bf16", "bf16_weights", "autocast_bf16_unguarded")
    rows, worst, top1_same = [], dict.fromkeys(variants, 0.0), dict.fromkeys(variants, True)
    for case, batch in cases.items():
        inputs = feature_extractor(batch, sampling_rate=16000, return_tensors="pt", device=device)
        with torch.inference_mode():
            fp32 = torch.sigmoid(model(**inputs).logits.float())
            with torch.autocast(device, dtype=torch.bfloat16):
                autocast = torch.sigmoid(model(**inputs).logits.float())
                autocast_unguarded = torch.sigmoid(unguarded(**inputs).logits.float())
            bf16_inputs = {"input_features": inputs["input_features"].to(torch.bfloat16),
                           "attention_mask": inputs["attention_mask"]}
            weights = torch.sigmoid(bf16_model(**bf16_inputs).logits.float())
        for name, probabilities in zip(variants, (autocast, weights, autocast_unguarded)):
            difference = (probabilities - fp32).abs().max().item()
            same = bool((probabilities.argmax(-1) == fp32.argmax(-1)).all())
            worst[name] = max(worst[name], difference)
            top1_same[name] &= same
            top2 = fp32.topk(2, dim=-1).values
            rows.append({"device": device, "case": case, "variant": name, "max_abs_prob_diff": difference,
                         "top1_fp32": fp32.argmax(-1).tolist(), "top1_bf16": probabilities.argmax(-1).tolist(),
                         "same_top1": same, "fp32_top1_margin": (top2[:, 0] - top2[:, 1]).min().item()})
    summary = {name: {"max_abs_prob_diff": worst[name], "same_top1": top1_same[name],
                      "met": worst[name] <= 1e-2 and top1_same[name]} for name in worst}
    return rows, summary


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--accuracy-only", action="store_true", help="skip the speed comparison on the base model")
    args = parser.parse_args()
    set_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

    speed_rows, accuracy_rows, accuracy_summary = [], [], {}
    for device in devices:
        accuracy_device_rows, accuracy_summary[device] = accuracy(device)
        accuracy_rows += accuracy_device_rows
        if not args.accuracy_only:
            speed_rows += speed(device, args.batch, args.seconds, args.repeats, args.warmup)

    if speed_rows:
        title = f"BeatsModel base, {args.batch} x {args.seconds:g} s, {args.threads} threads"
        columns = ["device", "variant", "median_s", "min_s", "paired_vs_fp32", "min_vs_fp32", "cpu_paired_vs_fp32",
                   "max_abs_diff"]
        print_table(speed_rows, columns, title)
    columns = ["device", "case", "variant", "max_abs_prob_diff", "top1_fp32", "top1_bf16", "same_top1",
               "fp32_top1_margin"]
    print_table(accuracy_rows, columns, "Fine-tuned tiny reference checkpoint: probabilities against fp32")
    autocast = next((row for row in speed_rows if row["device"] == "cpu" and row["variant"] == "autocast_bf16"), None)
    machine = machine_description(args.threads)
    for device, summary in accuracy_summary.items():
        cpu = f"{machine['cpu']} ({machine['cpu_capability']})"
        where = machine.get("gpu", "the GPU") if device == "cuda" else cpu
        worst = {name: f"{values['max_abs_prob_diff']:.2e}" for name, values in summary.items()}
        print(
            f"\nLargest probability difference from fp32 on {where}: autocast {worst['autocast_bf16']}, bf16 weights "
            f"{worst['bf16_weights']}; autocast without the float32 position-convolution guard "
            f"{worst['autocast_bf16_unguarded']}."
        )
    payload = {
        "machine": machine,
        "setup": {"batch": args.batch, "seconds": args.seconds, "repeats": args.repeats, "warmup": args.warmup,
                  "config": "BeatsConfig() defaults (base), sdpa, inference_mode"},
        "speed": speed_rows,
        "accuracy": accuracy_rows,
        "accuracy_summary": accuracy_summary,
        "goal": {"autocast_vs_fp32_max": 0.5, "autocast_vs_fp32": autocast and autocast["paired_vs_fp32"],
                 "met": autocast is not None and autocast["paired_vs_fp32"] <= 0.5, "probabilities_within": 1e-2},
    }
    path = write_results("bf16", payload, args.output)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
