"""Which precision trains fast on this machine."""

import torch


def bf16_is_fast(on_cpu: bool) -> bool:
    """Whether bf16 autocast runs on matrix units: a bf16-capable GPU, or a CPU with AVX512-BF16 or AMX (on 2 cores of
    an AMD EPYC with AVX512-BF16 the demo's pre-training step takes 0.62x its float32 time:
    benchmarks/demo_pretraining_bf16.py). Elsewhere bf16 is emulated and slower, so training stays in float32."""
    if not on_cpu:
        return torch.cuda.is_bf16_supported()
    checks = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(check is not None and check() for check in checks)
