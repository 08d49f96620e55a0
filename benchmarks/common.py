"""Shared helpers of the benchmark scripts: thread setup, alternating timing, peak memory, tables and JSON.

Timing rule used everywhere: all variants of one comparison live in the same process, each is warmed up, then the
variants are run in turn (the order rotates every round so that none always runs first or last) and each gets the
median of its runs. Ratios between variants of one run are what to read (`paired_ratio`: the median over rounds of
the per-round ratio); absolute times move by 10-20 %, at times by 2-3x, on a shared machine.

Memory rule: the peak resident set (Linux `VmHWM`) of one variant, measured in a fresh subprocess so that nothing
else inflates it. The high-water mark is reset (`/proc/self/clear_refs`) after the setup (model built, inputs made),
so `peak_mb` is the peak of the process while the first measured call runs (thread pools and caches included) and
`increment_mb` is how far it rose above the resident set before that call.
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[1]

# Benchmarks import the repository's `conversion/` helpers and `src/` when run from a checkout.
for path in (REPO_ROOT, REPO_ROOT / "src"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def base_parser(description: str, repeats: int = 5, warmup: int = 1) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed runs per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed runs per variant first")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--output", default=None, help="JSON path (default benchmarks/results/NAME.json)")
    # Internal: run one variant in this process and print its memory figures as JSON.
    parser.add_argument("--memory-variant", default=None, help=argparse.SUPPRESS)
    return parser


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_alternating(
    variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(wall seconds, process CPU seconds) of each run of each variant: `warmup` untimed calls each, then `repeats`
    rounds over all variants with the order rotated every round.

    The CPU time counts all threads of this process and only while they run, so it is far less disturbed than the
    wall time when other processes compete for the cores (it still includes the threads' spin-waiting).
    """
    names = list(variants)
    for name in names:
        for _ in range(warmup):
            variants[name]()
    synchronize()
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize()
            start, start_cpu = time.perf_counter(), time.process_time()
            variants[name]()
            synchronize()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def summarize(runs: list[float]) -> dict[str, float | list[float]]:
    return {
        "median_s": statistics.median(runs),
        "min_s": min(runs),
        "max_s": max(runs),
        "runs_s": [round(value, 4) for value in runs],
    }


def paired_ratio(times: dict[str, list[float]], name: str, baseline: str) -> float:
    """Median over rounds of time(name) / time(baseline) in the same round: robust to slow phases of the machine
    that hit every variant of a round alike."""
    return statistics.median(a / b for a, b in zip(times[name], times[baseline], strict=True))


def _status_mb(field: str) -> float:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, flags=re.MULTILINE)
    return int(match.group(1)) / 1024 if match else float("nan")


def current_rss_mb() -> float:
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    return _status_mb("VmHWM")


def reset_peak_rss() -> bool:
    """Reset the process's RSS high-water mark to the current RSS (Linux >= 4.0); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_peak_memory(run: Callable[[], object]) -> dict[str, float]:
    """Peak RSS while `run()` executes (in this process; call it in a fresh subprocess) and its rise above the RSS
    before the call. On CUDA the peak allocated memory is added."""
    reset_ok = reset_peak_rss()
    before = current_rss_mb()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()
    run()
    synchronize()
    result = {
        "rss_before_mb": round(before, 1),
        "peak_mb": round(peak_rss_mb(), 1),
        "increment_mb": round(peak_rss_mb() - before, 1),
        "peak_reset": reset_ok,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        result["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def memory_in_subprocess(script: str, variant: str, extra_args: list[str] | None = None) -> dict[str, float]:
    """Run `python SCRIPT --memory-variant VARIANT ...` and parse the JSON line it prints last."""
    command = [sys.executable, script, "--memory-variant", variant, *(extra_args or [])]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        return {"error": completed.stderr.strip().splitlines()[-1] if completed.stderr.strip() else "failed"}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def print_memory_result(result: dict) -> None:
    """The last stdout line of a `--memory-variant` run, read by `memory_in_subprocess`."""
    print(json.dumps(result), flush=True)


def machine_description(threads: int) -> dict[str, object]:
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), flags=re.MULTILINE)
        cpu = match.group(1).strip() if match else cpu
    description = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import transformers

        description["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        description["gpu"] = torch.cuda.get_device_name(0)
    return description


def write_results(name: str, payload: dict, output: str | None = None) -> Path:
    path = Path(output) if output else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M:%S"), **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def print_table(rows: list[dict], columns: list[str], title: str | None = None) -> None:
    """A Markdown table (pasteable into the README)."""
    if title:
        print(f"\n{title}")
    cells = [[_format(row.get(column, "")) for column in columns] for row in rows]
    widths = [max(len(column), *(len(cell[index]) for cell in cells)) for index, column in enumerate(columns)]
    print("| " + " | ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    for cell in cells:
        print("| " + " | ".join(value.ljust(width) for value, width in zip(cell, widths, strict=True)) + " |")


def _format(value: object) -> str:
    if isinstance(value, float):
        if value != 0 and abs(value) < 0.01:
            return f"{value:.1e}"
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)
