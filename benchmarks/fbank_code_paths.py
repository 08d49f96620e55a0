"""The Kaldi fbank on this CPU's MKL code paths: how far it lies from the official reference data (made on an AMD
EPYC), from the default path, and from the same clip run alone, against the derived float32 rounding bound of
tests/fbank_rounding.py.

Each MKL setting (default, `MKL_CBWR=AVX2`, `MKL_CBWR=COMPATIBLE`) runs in a fresh process, since MKL reads the
variable once when it loads. Figures are max abs differences in raw log-mel unless noted.

    python benchmarks/fbank_code_paths.py [--threads 2]
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import torch
from common import REPO_ROOT, base_parser, machine_description, print_table, set_threads, write_results

from beats_hf import BeatsFeatureExtractor
from beats_hf.feature_extraction_beats import kaldi_fbank

sys.path.insert(0, str(REPO_ROOT / "tests"))
from fbank_rounding import exact_log_mel  # noqa: E402

SETTINGS = ("default", "AVX2", "COMPATIBLE")
REFERENCE = REPO_ROOT / "tests" / "fixtures" / "official_tiny" / "inputs.pt"


def measure() -> dict:
    """The figures under this process's MKL setting; fbanks returned as lists for the comparison between paths."""
    reference = torch.load(REFERENCE, weights_only=True)
    preprocess = reference["preprocess"]
    single = kaldi_fbank(reference["single_waveform"])
    batch = kaldi_fbank(reference["batch_waveforms"])
    extractor = BeatsFeatureExtractor()
    clips = [waveform[0].numpy() for waveform in reference["individual_waveforms"]]
    together = extractor(clips, sampling_rate=16000, return_tensors="pt")["input_features"]
    alone = [extractor(clip, sampling_rate=16000, return_tensors="pt")["input_features"][0] for clip in clips]
    noise = torch.from_numpy(np.random.default_rng(0).uniform(-0.8, 0.8, 16000).astype(np.float32))
    exact, bound = exact_log_mel(reference["batch_waveforms"])
    return {
        "single_vs_reference": (single - preprocess["single_unpadded"]["fbank_raw_log_mel"]).abs().max().item(),
        "batch_vs_reference": (batch - preprocess["batch_padded"]["fbank_raw_log_mel"]).abs().max().item(),
        "batch_row_vs_alone_normalised": max(
            (together[index, : len(row)] - row).abs().max().item() for index, row in enumerate(alone)
        ),
        "largest_error_over_bound": ((batch.double() - exact).abs() / bound).max().item(),
        "bound_median_reference_batch": bound.median().item(),
        "bound_median_loud_noise": exact_log_mel(noise)[1].median().item(),
        "batch": batch.tolist(),
    }


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--setting", choices=SETTINGS, help=argparse.SUPPRESS)  # internal: one setting here
    args = parser.parse_args()
    set_threads(args.threads)
    if args.setting:
        print(json.dumps(measure()))
        return 0
    results = {}
    for setting in SETTINGS:
        environment = {key: value for key, value in os.environ.items() if key != "MKL_CBWR"}
        if setting != "default":
            environment["MKL_CBWR"] = setting
        command = [sys.executable, __file__, "--setting", setting, "--threads", str(args.threads)]
        completed = subprocess.run(command, env=environment, capture_output=True, text=True, check=True)
        results[setting] = json.loads(completed.stdout.strip().splitlines()[-1])
    default_batch = torch.tensor(results["default"]["batch"])
    rows = []
    for setting, figures in results.items():
        figures["batch_vs_default_path"] = (torch.tensor(figures.pop("batch")) - default_batch).abs().max().item()
        rows.append({"MKL_CBWR": setting, **figures})
    print_table(rows, list(rows[0]), "Kaldi fbank on this CPU's MKL code paths (max abs, raw log-mel unless noted)")
    path = write_results("fbank_code_paths", {"machine": machine_description(args.threads), "paths": rows},
                         args.output)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
