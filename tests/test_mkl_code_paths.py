"""MKL's code paths on this CPU: does `MKL_CBWR` change the fbank here, and does every path stay within rounding?

The README's test command reruns the float-sensitive tests under MKL_CBWR=AVX2 and MKL_CBWR=COMPATIBLE to see here what
another CPU would do. That is only worth something where the setting selects another path, so this test measures it in
fresh processes (MKL reads the variable once, when it loads) and says at the end of the run whether it does. On AMD
CPUs, where MKL already runs its generic path, it may not.
"""

import json
import os
import platform
import subprocess
import sys

import torch
from conftest import OFFICIAL_TINY, RUN_NOTES
from fbank_rounding import assert_within_rounding, exact_log_mel

SETTINGS = ("default", "AVX2", "COMPATIBLE")

_FBANK_IN_A_FRESH_PROCESS = """
import sys, torch
from beats_hf.feature_extraction_beats import kaldi_fbank
torch.set_num_threads(2)
waveforms = torch.load(sys.argv[1], weights_only=True)["batch_waveforms"]
torch.save(kaldi_fbank(waveforms), sys.argv[2])
"""


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def fbank_under(setting: str, tmp_path) -> torch.Tensor:
    environment = {key: value for key, value in os.environ.items() if key != "MKL_CBWR"}
    if setting != "default":
        environment["MKL_CBWR"] = setting
    output = tmp_path / f"fbank_{setting}.pt"
    subprocess.run(
        [sys.executable, "-c", _FBANK_IN_A_FRESH_PROCESS, str(OFFICIAL_TINY / "inputs.pt"), str(output)],
        env=environment, check=True, capture_output=True, text=True,
    )
    return torch.load(output, weights_only=True)


def test_mkl_settings_change_the_fbank_only_within_rounding(reference_inputs, tmp_path):
    fbanks = {setting: fbank_under(setting, tmp_path) for setting in SETTINGS}
    exact, bound = exact_log_mel(reference_inputs["batch_waveforms"])
    for setting, fbank in fbanks.items():
        assert_within_rounding(fbank, exact, bound, f"MKL_CBWR={setting}")
    official = reference_inputs["preprocess"]["batch_padded"]["fbank_raw_log_mel"]
    differences = {
        setting: {
            "vs_default": (fbank - fbanks["default"]).abs().max().item(),
            "vs_reference_data": (fbank - official).abs().max().item(),
        }
        for setting, fbank in fbanks.items()
    }
    changed = [setting for setting in SETTINGS[1:] if differences[setting]["vs_default"] > 0]
    unchanged = [setting for setting in SETTINGS[1:] if setting not in changed]
    RUN_NOTES.append(f"MKL code paths on {cpu_name()} (raw log-mel, max abs): {json.dumps(differences)}")
    if changed:
        verb = "changes" if len(changed) == 1 else "change"
        names = " and ".join(changed)
        RUN_NOTES.append(f"MKL_CBWR={names} {verb} the fbank on this CPU: the reruns test other paths.")
    if unchanged:
        verb = "does" if len(unchanged) == 1 else "do"
        RUN_NOTES.append(
            f"MKL_CBWR={' and '.join(unchanged)} {verb} NOT change the fbank on this CPU: those reruns repeat the "
            "default path here and say nothing about other CPUs."
        )
