"""Training the acoustic tokenizer's codebook (paper §3.2): spherical k-means initialisation, the norm-EMA update of
the official `NormEMAVectorQuantizer`, the collectives that keep every process's codebook identical, and code-usage
statistics.

The codebook itself is the tokenizer's `quantizer.codebook` parameter (never touched by the optimiser);
`NormEmaCodebook` holds only the statistics, as buffers, so that they are saved in (and restored from) every Trainer
checkpoint. The update, per training step, on the L2-normalised vectors `z` and their nearest codes:

    counts[k] = number of vectors assigned to code k      (summed over all processes)
    means[k]  = normalize(sum of the vectors assigned to k / counts[k])
    codebook  = normalize(decay * codebook + (1 - decay) * means)   for the codes used in this step
    codebook  = codebook                                             for the others (kept, not reset)

which is what the official code does (its `embed_avg` buffers are never used). `cluster_size` is the EMA of `counts`.

With `restart_dead_codes` (our addition; the official code has none), a code that no vector chose for
`dead_after_updates` updates is moved onto a vector of the current step, drawn at random from all processes' vectors.
Without it, codes that the k-means initialisation placed where the student's output no longer goes stay dead for good:
distilling a small SSL model, the demo's tokenizer ended with 959 of 1024 codes dead (codebook perplexity 24).
"""

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all processes, in place (a no-op in a single process). Returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Concatenate the `(n_i, dim)` tensors of all processes (n_i may differ), in rank order."""
    if not is_distributed():
        return rows
    world_size = dist.get_world_size()
    count = torch.tensor([rows.shape[0]], device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(world_size)]
    dist.all_gather(counts, count)
    counts = [int(c.item()) for c in counts]
    # all_gather needs equal shapes: pad to the largest, then trim.
    padded = rows.new_zeros(max(counts), rows.shape[1])
    padded[: rows.shape[0]] = rows
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)
    return torch.cat([part[:n] for part, n in zip(gathered, counts)])


def broadcast_(tensor: torch.Tensor, source: int = 0) -> torch.Tensor:
    """Overwrite `tensor` with the one of process `source`, in place (a no-op in a single process)."""
    if is_distributed():
        dist.broadcast(tensor, src=source)
    return tensor


def _squared_distances(vectors: torch.Tensor, centroid: torch.Tensor) -> torch.Tensor:
    """|v - c|^2 = 2 - 2 v.c for unit vectors, in float64; rounding-level values (a vector and its copy) count as 0."""
    distances = (2.0 - 2.0 * (vectors @ centroid)).double()
    return distances.masked_fill(distances < 1e-6, 0.0)


def _kmeans_plus_plus(vectors: torch.Tensor, num_clusters: int, generator: torch.Generator | None) -> torch.Tensor:
    """k-means++ seeding on unit vectors: each new centroid is a vector drawn with probability proportional to its
    squared distance to the nearest centroid so far, so a repeated vector (silence gives many identical patches) is
    never drawn twice. When the distinct vectors run out, the remaining centroids are jittered copies: exact
    duplicates would tie forever, and a code that never wins is dead from the start."""
    num_vectors = vectors.shape[0]
    uniforms = torch.rand(num_clusters, generator=generator, dtype=torch.float64)
    picks = [int(uniforms[0] * num_vectors)]
    nearest = _squared_distances(vectors, vectors[picks[0]])
    for index in range(1, num_clusters):
        cumulative = nearest.cumsum(0)
        total = cumulative[-1]
        if total <= 0:
            break
        # right=True: the first vector whose cumulative mass exceeds the draw, never one with zero mass.
        target = (uniforms[index] * total).reshape(1).to(cumulative.device)
        pick = int(torch.searchsorted(cumulative, target, right=True).clamp(max=num_vectors - 1))
        picks.append(pick)
        nearest = torch.minimum(nearest, _squared_distances(vectors, vectors[pick]))
    centroids = vectors[torch.tensor(picks, device=vectors.device)]
    missing = num_clusters - len(picks)
    if missing:
        copies = vectors[torch.randint(num_vectors, (missing,), generator=generator).to(vectors.device)]
        noise = torch.randn(missing, vectors.shape[1], generator=generator).to(vectors.device)
        centroids = torch.cat([centroids, F.normalize(copies + 0.05 * noise, dim=-1)])
    return centroids


def spherical_kmeans(
    vectors: torch.Tensor, num_clusters: int, num_iterations: int = 10, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """K-means with cosine similarity on unit vectors `(n, dim)`: unit centroids `(num_clusters, dim)` and the number
    of vectors assigned to each in the last assignment `(num_clusters,)` (float).

    Seeded by k-means++ (`generator` is a CPU generator; the official code draws random vectors instead, which can put
    two centroids in one cluster and none in another). An empty cluster keeps its centroid.
    """
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise ValueError(f"k-means needs a non-empty (n, dim) tensor, got shape {tuple(vectors.shape)}.")
    vectors = vectors.float()
    centroids = _kmeans_plus_plus(vectors, num_clusters, generator)
    for _ in range(num_iterations):
        assignments = (vectors @ centroids.t()).argmax(-1)
        counts = torch.bincount(assignments, minlength=num_clusters)
        sums = torch.zeros_like(centroids).index_add_(0, assignments, vectors)
        centroids = torch.where((counts > 0).unsqueeze(-1), F.normalize(sums, dim=-1), centroids)
    assignments = (vectors @ centroids.t()).argmax(-1)
    return centroids, torch.bincount(assignments, minlength=num_clusters).float()


def codebook_usage(counts: torch.Tensor) -> float:
    """Share of the codes that were chosen at least once, from per-code counts."""
    return (counts > 0).float().mean().item()


def codebook_perplexity(counts: torch.Tensor) -> float:
    """exp(entropy) of the code distribution given by per-code counts: the number of equally used codes that would
    give the same entropy (the codebook size at best, 1 when one code takes everything)."""
    total = counts.sum()
    if total <= 0:
        return 0.0
    probabilities = counts.double() / total
    entropy = -(probabilities * probabilities.clamp_min(1e-30).log()).sum()
    return math.exp(entropy.item())


class NormEmaCodebook(nn.Module):
    """EMA statistics of a codebook trained as the official `NormEMAVectorQuantizer` (see the module docstring).

    Buffers (all saved in checkpoints):
        initialized (`()` int64): 1 once k-means has set the codebook.
        cluster_size (`(codebook_size,)` float32): EMA of the number of vectors assigned to each code per update.
        updates_since_used (`(codebook_size,)` int64): updates since each code was last chosen (a code unused for
            `dead_after_updates` updates counts as dead).
        num_updates (`()` int64): updates so far (seeds the draws of restarted codes, so a resumed run repeats them).
        restarted_codes (`()` int64): codes restarted so far.

    Every method that communicates must be called by all processes at the same point (as inside a training step).
    """

    def __init__(
        self,
        codebook_size: int,
        decay: float,
        kmeans_iterations: int = 10,
        dead_after_updates: int | None = None,
        seed: int = 0,
        restart_dead_codes: bool = False,
    ):
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must lie in (0, 1), got {decay!r}.")
        if kmeans_iterations < 0:
            raise ValueError(f"kmeans_iterations must be >= 0, got {kmeans_iterations!r}.")
        if dead_after_updates is not None and dead_after_updates < 1:
            raise ValueError(f"dead_after_updates must be >= 1, got {dead_after_updates!r}.")
        self.codebook_size = codebook_size
        self.decay = decay
        self.kmeans_iterations = kmeans_iterations
        # Default: the EMA horizon, after which a code's past assignments have almost no weight left.
        self.dead_after_updates = dead_after_updates or math.ceil(1.0 / (1.0 - decay))
        self.seed = seed
        self.restart_dead_codes = restart_dead_codes
        self.register_buffer("initialized", torch.zeros((), dtype=torch.long))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("updates_since_used", torch.zeros(codebook_size, dtype=torch.long))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("restarted_codes", torch.zeros((), dtype=torch.long))

    @property
    def is_initialized(self) -> bool:
        return bool(self.initialized.item())

    def _check(self, codebook: torch.Tensor) -> None:
        if codebook.shape[0] != self.codebook_size:
            raise ValueError(f"The codebook has {codebook.shape[0]} codes, these statistics {self.codebook_size}.")

    @torch.no_grad()
    def initialize(self, codebook: torch.Tensor, vectors: torch.Tensor) -> None:
        """Set `codebook` (in place) to the spherical k-means centroids of `vectors` `(n, dim)` (unit norm) gathered
        from all processes. Rank 0's result is broadcast, so every process ends with the same bits."""
        self._check(codebook)
        gathered = all_gather_rows(vectors.detach().float())
        generator = torch.Generator().manual_seed(self.seed)
        centroids, counts = spherical_kmeans(gathered, self.codebook_size, self.kmeans_iterations, generator)
        broadcast_(centroids)
        broadcast_(counts)
        codebook.copy_(centroids.to(codebook.dtype))
        self.cluster_size.copy_(counts)
        self.updates_since_used.zero_()
        self.initialized.fill_(1)

    @torch.no_grad()
    def update(self, codebook: torch.Tensor, vectors: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """One norm-EMA update of `codebook` (in place) from unit `vectors` `(n, dim)` and their nearest `codes`
        `(n,)`, with the per-code counts and sums summed over all processes first. Returns those global counts
        `(codebook_size,)` (float32), the same on every process."""
        self._check(codebook)
        dim = codebook.shape[1]
        # One all-reduce for both: columns [0, dim) hold the summed vectors, column dim the counts.
        stats = torch.zeros(self.codebook_size, dim + 1, device=codebook.device, dtype=torch.float32)
        stats[:, :dim].index_add_(0, codes, vectors.detach().float())
        stats[:, dim].index_add_(0, codes, torch.ones_like(codes, dtype=torch.float32))
        all_reduce_sum(stats)
        sums, counts = stats[:, :dim], stats[:, dim]
        used = counts > 0

        self.cluster_size.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        means = F.normalize(sums / counts.clamp(min=1.0).unsqueeze(-1), dim=-1)
        current = codebook.float()
        target = torch.where(used.unsqueeze(-1), means, current)
        updated = F.normalize(current * self.decay + target * (1.0 - self.decay), dim=-1)
        codebook.copy_(updated.to(codebook.dtype))
        self.updates_since_used.add_(1).masked_fill_(used, 0)
        self.num_updates.add_(1)
        if self.restart_dead_codes:
            self._restart_dead_codes(codebook, vectors)
        return counts

    @torch.no_grad()
    def _restart_dead_codes(self, codebook: torch.Tensor, vectors: torch.Tensor) -> None:
        """Move the dead codes onto vectors of this step (all processes'), distinct ones while there are enough."""
        dead = self._dead().nonzero().squeeze(1)
        if dead.numel() == 0:
            return
        pool = all_gather_rows(vectors.detach().float())
        if pool.shape[0] == 0:
            return
        # Same seed on every process and for a resumed run: (seed, update number).
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.num_updates.item()))
        if pool.shape[0] >= dead.numel():
            picks = torch.randperm(pool.shape[0], generator=generator)[: dead.numel()]
        else:
            picks = torch.randint(pool.shape[0], (dead.numel(),), generator=generator)
        # A little noise, so that two codes restarted onto one vector (or onto a silent patch's twin) can separate.
        noise = 0.01 * torch.randn(dead.numel(), pool.shape[1], generator=generator)
        replacements = broadcast_(F.normalize(pool[picks.to(pool.device)] + noise.to(pool.device), dim=-1))
        codebook[dead] = replacements.to(codebook.dtype)
        self.updates_since_used[dead] = 0
        self.restarted_codes.add_(dead.numel())

    def _dead(self) -> torch.Tensor:
        """`(codebook_size,)` bool: codes no vector has chosen in the last `dead_after_updates` updates."""
        return self.updates_since_used >= self.dead_after_updates

    def num_dead_codes(self) -> int:
        """Codes no vector has chosen in the last `dead_after_updates` updates."""
        return int(self._dead().sum().item())

    def extra_repr(self) -> str:
        return (
            f"codebook_size={self.codebook_size}, decay={self.decay}, kmeans_iterations={self.kmeans_iterations}, "
            f"dead_after_updates={self.dead_after_updates}, restart_dead_codes={self.restart_dead_codes}"
        )


__all__ = [
    "NormEmaCodebook",
    "all_gather_rows",
    "all_reduce_sum",
    "broadcast_",
    "codebook_perplexity",
    "codebook_usage",
    "is_distributed",
    "spherical_kmeans",
]
