"""How far a float32 Kaldi fbank may lie from the exact one: a bound derived from float32 rounding, per element.

Why a bound and not a fixed tolerance: torch's CPU FFT and matmul are MKL's, and MKL picks its code path by CPU
(AVX-512 on Intel, a generic path on AMD) and by `MKL_CBWR`; it may also treat a transform differently by its place in
a batch. Each path rounds differently, and the log turns a tiny absolute error in a quiet mel bin into a large one. The
unmodified official fbank run on an Intel machine differs from the AMD reference data by 3e-4 (batch: 1.4e-3) in raw
log-mel.

The derivation. For one frame, beats_hf and the official code compute
    x = the windowed frame (DC removal, pre-emphasis, povey window, zero padding to N = 512): elementwise ops and
        fixed-length reductions in torch's own kernels, identical bits whatever MKL does;
    X = rfft(x), P = |X|^2, E = W P (W: 128 x 257 non-negative mel weights), out = log(max(E, eps)).
The exact E is computed here in float64 from the same float32 x (float64 rounding, ~1e-16, is negligible). A float32
computation of E differs from it by at most
  1. FFT: Higham, "Accuracy and Stability of Numerical Algorithms" (2nd ed.), Theorem 24.2: a radix-2 FFT over
     L = log2 N stages, with twiddle factors accurate to mu <= u (u = 2^-24), has
     ||X^ - X||_2 <= L eta / (1 - L eta) ||X||_2, eta = mu + gamma_4 (sqrt(2) + mu), gamma_k = k u / (1 - k u).
     Radix-4 and split-radix kernels obey a bound of the same form with a smaller constant; a real-input transform
     adds one pass (splitting a half-length complex FFT), so L = log2(512) + 1 = 10. No single bin can be off by more
     than the whole error vector: |X^_k - X_k| <= delta = eps_fft ||X||_2, where ||X||_2^2 <= 2 sum_k |X_k|^2 over the
     257 one-sided bins.
  2. Power: ||X^_k|^2 - |X_k|^2| <= 2 |X_k| delta + delta^2, plus 3u |X_k|^2 for rounding the modulus and the square.
  3. Mel matmul: 257 non-negative terms summed in any order: error <= gamma_257 sum_k W_mk P_k.
  So |E^_m - E_m| <= Delta_m = sum_k W_mk (2 |X_k| delta + delta^2 + 3u P_k) + gamma_257 (W P)_m.
  4. Log with the floor: max(., eps) and log are monotone, so log(max(E^, eps)) lies in
     [log max(E - Delta, eps), log max(E + Delta, eps)], widened by the log's own rounding (2u |log|).
  5. Normalisation (official and beats_hf: (log_mel - mean) / (2 std) in float32): the log's bound divided by 2 std,
     plus rounding the constants, the difference and the quotient (4u (|result| + mean / (2 std))).
Two computations of the same clip (two CPUs, two MKL paths, or two places in a batch) each stay within this bound of
the exact value, so tests compare each one with the exact value. The bound is a worst case: measured errors stay below
a few percent of it, but it grows where it should, in the quiet mel bins that the FFT's error swamps.
"""

import math

import torch

from beats_hf.feature_extraction_beats import (
    FLOAT32_EPSILON,
    INPUT_SCALE,
    _fbank_constants,
    num_frames,
    windowed_frames,
)

UNIT_ROUNDOFF = 2.0**-24
FFT_STAGES = 10  # log2(512) radix-2 stages + the real-input split


def gamma(k: int) -> float:
    return k * UNIT_ROUNDOFF / (1 - k * UNIT_ROUNDOFF)


def fft_relative_error() -> float:
    eta = UNIT_ROUNDOFF + gamma(4) * (math.sqrt(2) + UNIT_ROUNDOFF)
    return FFT_STAGES * eta / (1 - FFT_STAGES * eta)


def exact_log_mel(waveforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-mel computed in float64 from the float32 frames, bound on any float32 computation's error), both
    `(batch, frames, 128)` float64, for `waveforms` `(batch, samples)` in [-1, 1] at 16 kHz."""
    waveforms = waveforms.reshape(-1, waveforms.shape[-1]).float()
    window, mel_banks, _ = _fbank_constants(128, 16000, 400, torch.device("cpu"), torch.float32)
    frames = windowed_frames(waveforms, num_frames(waveforms.shape[-1]), INPUT_SCALE, 400, 160, window, 512)
    spectrum = torch.fft.rfft(frames.double())
    magnitude = spectrum.abs()
    power = magnitude.square()
    mel = mel_banks.double().T
    energies = power @ mel

    delta = fft_relative_error() * (2 * power.sum(-1, keepdim=True)).sqrt()
    error = (2 * magnitude * delta + delta.square() + 3 * UNIT_ROUNDOFF * power) @ mel + gamma(257) * energies
    floor = torch.tensor(FLOAT32_EPSILON, dtype=torch.float64)
    log_mel = torch.maximum(energies, floor).log()
    upper = torch.maximum(energies + error, floor).log() - log_mel
    lower = log_mel - torch.maximum(energies - error, floor).log()
    bound = torch.maximum(upper, lower) + 2 * UNIT_ROUNDOFF * log_mel.abs()
    return log_mel, bound


def exact_features(waveforms: torch.Tensor, mean: float = 15.41663, std: float = 6.55582):
    """(normalised features in float64, bound on any float32 computation's error): `exact_log_mel` after
    `(log_mel - mean) / (2 std)`."""
    log_mel, bound = exact_log_mel(waveforms)
    features = (log_mel - mean) / (2 * std)
    rounding = 4 * UNIT_ROUNDOFF * (features.abs() + mean / (2 * std))
    return features, bound / (2 * std) + rounding


def assert_within_rounding(actual: torch.Tensor, exact: torch.Tensor, bound: torch.Tensor, what: str = "") -> None:
    """Every element of a float32 result within its derived rounding bound of the exact value."""
    assert actual.shape == exact.shape, (what, actual.shape, exact.shape)
    excess = (actual.double() - exact).abs() - bound
    worst = int(excess.argmax())
    assert excess.max() <= 0, (
        f"{what}: element {worst} is {float(excess.flatten()[worst]):.3g} beyond its rounding bound "
        f"{float(bound.flatten()[worst]):.3g}"
    )


def probability_tolerance(model, waveform: torch.Tensor, model_tolerance: float) -> torch.Tensor:
    """Per-class bound on |p(beats_hf fbank) - p(official fbank)| + the model's own parity tolerance, for a classifier
    run on one clip from its raw waveform: both fbanks lie within `exact_features`' bound of the exact one, so they
    differ by at most twice that bound per element, and to first order the probabilities move by
    sum_i |dp/df_i| * 2 bound_i. (The model's own parity, from the official fbank, is `model_tolerance`.)"""
    exact, bound = exact_features(waveform)
    features = exact.float().requires_grad_(True)
    probabilities = model(input_features=features).logits.sigmoid()[0]
    tolerance = []
    for probability in probabilities:
        (gradient,) = torch.autograd.grad(probability, features, retain_graph=True)
        tolerance.append(float((gradient.double().abs() * 2 * bound).sum()))
    return torch.tensor(tolerance, dtype=torch.float64) + model_tolerance
