"""Mask drawing for masked audio modeling: small numpy functions run on the CPU by the data collator (as wav2vec2's
`_compute_mask_indices`), so the model receives `bool_masked_pos` as an input."""

import warnings

import numpy as np


def num_masked_patches(num_valid: np.ndarray, mask_ratio: float) -> np.ndarray:
    """Patches to mask per clip: `mask_ratio * num_valid` rounded half up, kept in `[1, num_valid - 1]` so that every
    clip has at least one masked and one visible patch. A clip with fewer than 2 valid patches gets 0: one patch cannot
    be both, and an encoder input with no visible patch carries nothing to learn from."""
    num_valid = np.asarray(num_valid, dtype=np.int64)
    wanted = np.floor(mask_ratio * num_valid + 0.5).astype(np.int64)
    return np.where(num_valid >= 2, np.clip(wanted, 1, np.maximum(num_valid - 1, 1)), 0)


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function: a bijection of uint64 whose outputs look independent for successive inputs."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class KeyedUniforms:
    """Uniform numbers in [0, 1) that are a fixed function of `(seed, key of the row, column)`, drawn for a whole batch
    with array operations (SplitMix64). Pass it to `random_masked_patches` as `rng`: row i of `random(shape)` depends
    on `keys[i]` only, so a clip gets the same mask whichever batch, process, worker or resumed run draws it.

    Args:
        seed: the seed of the stream.
        keys: int `(batch, k)`: what identifies each row, e.g. (epoch, clip index).
    """

    def __init__(self, seed: int, keys: np.ndarray):
        keys = np.asarray(keys, dtype=np.int64)
        if keys.ndim != 2:
            raise ValueError(f"keys must be (batch, k), got shape {keys.shape}.")
        with np.errstate(over="ignore"):
            state = _mix64(np.full(keys.shape[0], int(seed) & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64) + _GOLDEN)
            for column in keys.T.astype(np.uint64):
                state = _mix64((state ^ column) + _GOLDEN)
        self.row_states = state

    def random(self, shape: tuple[int, int]) -> np.ndarray:
        rows, columns = shape
        if rows != self.row_states.shape[0]:
            raise ValueError(f"{self.row_states.shape[0]} keys for {rows} rows.")
        with np.errstate(over="ignore"):
            counters = np.arange(1, columns + 1, dtype=np.uint64) * _GOLDEN
            bits = _mix64(self.row_states[:, None] + counters[None, :])
        return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def random_masked_patches(patch_mask: np.ndarray, mask_ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Random patch masking (the paper's 75 % recipe): for each clip, `num_masked_patches` patches drawn uniformly
    without replacement among its valid patches.

    Args:
        patch_mask: bool `(batch, patches)`, True for real (not padded) patches.
        mask_ratio: share of each clip's valid patches to mask, in (0, 1).
        rng: what draws the masks (anything with `random(shape)`: a numpy Generator, or `KeyedUniforms` for masks that
            are a function of each clip's key); the same seed gives the same masks.

    Returns:
        bool `(batch, patches)`, True for masked patches; always False at padded patches.
    """
    patch_mask = np.asarray(patch_mask, dtype=bool)
    if patch_mask.ndim != 2:
        raise ValueError(f"patch_mask must be (batch, patches), got shape {patch_mask.shape}.")
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must lie in (0, 1), got {mask_ratio!r}.")
    num_masked = num_masked_patches(patch_mask.sum(1), mask_ratio)
    # Random keys with padded patches sorted last: the num_masked smallest keys of a clip are a uniform draw of
    # num_masked of its valid patches.
    keys = np.where(patch_mask, rng.random(patch_mask.shape), np.inf)
    ranks = np.argsort(np.argsort(keys, axis=1, kind="stable"), axis=1, kind="stable")
    return (ranks < num_masked[:, None]) & patch_mask




def compute_patch_mask(patch_mask: np.ndarray, mask_ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Deprecated name of `random_masked_patches` (`compute_patch_mask` also named patch validity in the model)."""
    warnings.warn(
        "beats_hf.training.pretraining.masking.compute_patch_mask is now random_masked_patches; the old name will be "
        "removed.",
        FutureWarning,
        stacklevel=2,
    )
    return random_masked_patches(patch_mask, mask_ratio, rng)


__all__ = ["KeyedUniforms", "num_masked_patches", "random_masked_patches"]
