"""Helpers shared by the benchmark scripts: timing, peak memory, FLOPs, machine description, tables.

Not part of the package: the scripts in benchmarks/ import it as a sibling module.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))


# -- the machine -----------------------------------------------------------------------------------------------


def set_threads(n: int | None) -> int:
    """torch.set_num_threads(n) when n is given; returns the number of intra-op threads in use."""
    if n:
        torch.set_num_threads(int(n))
    return torch.get_num_threads()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(device: torch.device) -> str:
    """One line naming the hardware and software the numbers were measured on."""
    cores = os.cpu_count()
    if device.type == "cuda":
        hw = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    else:
        hw = f"{cpu_name()}, {cores} cores, {torch.get_num_threads()} torch threads"
    return f"{hw}; torch {torch.__version__}; Python {platform.python_version()}; {platform.system()}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


# -- timing ------------------------------------------------------------------------------------------------------


def time_iterations(fn, device: torch.device, warmup: int, iters: int) -> dict:
    """Call fn() `warmup` times untimed, then `iters` times timed one by one (synchronising the device).

    Returns {"median_s", "mean_s", "min_s", "iters"} per call. The median is what the tables report: it is
    the least affected by other processes competing for a shared CPU.
    """
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(max(1, iters)):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "mean_s": statistics.fmean(times), "min_s": min(times),
            "iters": len(times)}


# -- peak memory -------------------------------------------------------------------------------------------------


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_rss_peak() -> bool:
    """Linux: writing 5 to /proc/self/clear_refs resets the peak RSS (VmHWM) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _proc_status_kib("VmHWM") is not None
    except OSError:
        return False


class PeakMemory:
    """Measure the peak memory of a block of code.

    CUDA: `torch.cuda.max_memory_allocated` over the block (peak stats reset at the start): every tensor
    the PyTorch caching allocator handed out, weights and optimizer state included ("cuda_allocated").
    CPU: the increase of the process's resident set size (RSS) over its value at the start of the block
    (the model's weights, created before, are not counted; activations, gradients, optimizer state and
    allocator overhead are). On Linux the kernel's own peak (VmHWM, reset through /proc/self/clear_refs)
    is exact ("rss_delta"); elsewhere RSS is polled every 2 ms with psutil ("rss_delta_polled").
    After the block, `.mib` holds the number and `.kind` what it measured.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.mib = float("nan")
        self.kind = "unavailable"
        self._poll = None

    def __enter__(self):
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda_allocated"
            return self
        self._start = _proc_status_kib("VmRSS")
        if self._start is not None and _reset_rss_peak():
            self.kind = "rss_delta"
            return self
        try:
            import psutil
        except ImportError:
            return self
        proc = psutil.Process()
        self._start = proc.memory_info().rss / 1024
        self._peak = self._start
        self._stop = threading.Event()

        def poll():
            while not self._stop.is_set():
                self._peak = max(self._peak, proc.memory_info().rss / 1024)
                time.sleep(0.002)

        self._poll = threading.Thread(target=poll, daemon=True)
        self._poll.start()
        self.kind = "rss_delta_polled"
        return self

    def __exit__(self, *exc):
        if self.kind == "cuda_allocated":
            sync(self.device)
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        elif self.kind == "rss_delta":
            self.mib = max(0, _proc_status_kib("VmHWM") - self._start) / 1024
        elif self.kind == "rss_delta_polled":
            self._stop.set()
            self._poll.join()
            self.mib = max(0.0, self._peak - self._start) / 1024
        return False


MEMORY_NOTE = {
    "cuda_allocated": "peak memory = torch.cuda.max_memory_allocated during the phase (weights, gradients, "
                      "optimizer state and activations)",
    "rss_delta": "peak memory = rise of the process's peak RSS (Linux VmHWM) above its RSS when the phase "
                 "started (weights already allocated are not counted)",
    "rss_delta_polled": "peak memory = rise of the process's RSS (polled with psutil every 2 ms) above its "
                        "value when the phase started (weights already allocated are not counted)",
    "unavailable": "peak memory unavailable on this platform",
}


# -- sizes -------------------------------------------------------------------------------------------------------


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(fn) -> float | None:
    """FLOPs of one call of fn() as counted by torch.utils.flop_counter.FlopCounterMode (matmuls and
    convolutions; a multiply-add counts as 2). None if the counter is unavailable."""
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        return None
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            fn()
        return float(counter.get_total_flops())
    except Exception:  # an op the counter does not know
        return None


# -- output ------------------------------------------------------------------------------------------------------


def fmt(value) -> str:
    """Numbers for tables: 3 significant digits below 10, fewer decimals above; None / NaN as a dash."""
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, float):
        a = abs(value)
        if a >= 100:
            return f"{value:.0f}"
        if a >= 10:
            return f"{value:.1f}"
        if a >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    cells = [[fmt(v) for v in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def print_summary(title: str, machine: str, command: str, table: str, notes: list[str] = ()) -> None:
    """The single block each script ends with: easy to paste into benchmarks/README.md."""
    print()
    print(f"### {title}")
    print()
    print(f"Machine: {machine}  ")
    print(f"Command: `{command}`")
    print()
    print(table)
    for note in notes:
        print(f"\n{note}")
    sys.stdout.flush()


def command_line() -> str:
    """How this script was invoked, relative to the repo root (for the summary)."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(REPO)
    except ValueError:
        pass
    return " ".join(["python", str(script), *sys.argv[1:]])


def run_cli(args: list[str], timeout: float | None = None, quiet: bool = False,
            threads: int | None = None) -> subprocess.CompletedProcess:
    """Run `python -m ddpm_lite ARGS` from the repo root; raises with its stderr if it fails.
    `threads` sets OMP_NUM_THREADS (PyTorch's CPU thread count) for the child process."""
    cmd = [sys.executable, "-m", "ddpm_lite", *args]
    if not quiet:
        print("$ python -m ddpm_lite " + " ".join(args), flush=True)
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    if not quiet and proc.stdout.strip():
        print(proc.stdout.rstrip(), flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"`python -m ddpm_lite {' '.join(args)}` failed with status {proc.returncode}:\n"
                         f"{proc.stderr.strip()[-3000:]}")
    return proc


@contextmanager
def timer():
    """with timer() as t: ...; t() is the elapsed seconds (also after the block)."""
    start = time.perf_counter()
    end = [None]

    def elapsed():
        return (end[0] if end[0] is not None else time.perf_counter()) - start

    try:
        yield elapsed
    finally:
        end[0] = time.perf_counter()
