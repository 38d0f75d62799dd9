"""`blockmae bench model`: MAE training steps of blockmae against Hugging Face ViTMAEForPreTraining.

Both models have the same architecture (ViT-S/8 at 64 px, 256-wide 4-deep decoder, 75% masking) and the
same optimiser (AdamW). A step is forward + backward + AdamW step. After warm-up the variants are run in
turn, round after round, so that load from other processes hits them alike; times are medians.
Our model draws 2x2 block masks from its generator inside the step (ViTMAE draws random masks).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import re
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from blockmae.config import number
from blockmae.errors import BlockMAEError
from blockmae.masking import MaskGenerator
from blockmae.models import build_mae
from blockmae.models.hf import build_hf_vitmae

IMG_SIZE, PATCH_SIZE = 64, 8
say = partial(print, flush=True)  # results appear as they are measured, also when piped


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer rounds, no torch.compile (under a minute)")
    parser.add_argument("--batch-size", type=number(int, ">=1"),
                        default=None, help="images per step (default: 32 on CPU, 256 on GPU)")
    parser.add_argument("--rounds", type=number(int, ">=1"),
                        default=None, help="timed rounds per variant (default: 3 quick, 10)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--profile", action="store_true",
                        help="print a torch.profiler table of our fp32 step (where the time goes) and stop")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="also time torch.compile of our model (auto: on unless --quick)")


@dataclass
class Variant:
    name: str
    step: Callable[[], None]
    times: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return statistics.median(self.times)


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BlockMAEError("--device cuda was requested but no CUDA GPU is visible")
    on_gpu = device.type == "cuda"
    batch = args.batch_size or (256 if on_gpu else 32)
    rounds = args.rounds or (3 if args.quick else 10)
    use_compile = args.compile == "on" or (args.compile == "auto" and not args.quick)
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    if batch < 1 or rounds < 1:
        raise BlockMAEError("--batch-size and --rounds must be at least 1")

    torch.manual_seed(0)
    ours = build_mae("vit_small", img_size=IMG_SIZE, patch_size=PATCH_SIZE, mask_ratio=0.75,
                     mask_family="block", mask_block=2).to(device).train()
    hf = build_hf_vitmae(ours.arch).to(device).train()
    masks = MaskGenerator(IMG_SIZE // PATCH_SIZE, 0.75, family="block", block=2)  # the engine's generator
    images = torch.randn(batch, 3, IMG_SIZE, IMG_SIZE, device=device)
    arch = ours.arch
    say(f"blockmae bench model: ViT-S/{PATCH_SIZE} at {IMG_SIZE} px (encoder {arch['embed_dim']}x{arch['depth']}, "
          f"decoder {arch['decoder_embed_dim']}x{arch['decoder_depth']}), 75% masking, batch {batch}, "
          f"{_device_name(device)}")

    peaks = {name: _matmul_peak(device, dtype, sync) for name, dtype in (("fp32", torch.float32),
                                                                        ("bf16", torch.bfloat16))}
    say(f"matmul peak: fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s "
          f"(torch.matmul, best of 3)")
    if args.profile:
        _profile(_train_step(ours, lambda: ours(images, mask=masks(batch, device=device)).loss, None))
        return 0

    ours_loss = lambda: ours(images, mask=masks(batch, device=device)).loss  # noqa: E731  (masks drawn in the step)
    hf_loss = lambda: hf(pixel_values=images).loss  # noqa: E731
    pair = images[:2]  # FLOPs are linear in the batch: count two images, scale up
    flops = {"ours": _step_flops(ours, lambda: ours(pair, mask=masks(2, device=device)).loss) * batch // 2,
             "vitmae": _step_flops(hf, lambda: hf(pixel_values=pair).loss) * batch // 2}
    say(f"step FLOPs (forward + backward, FlopCounterMode): ours {flops['ours'] / 1e9:.1f} G, "
          f"ViTMAE {flops['vitmae'] / 1e9:.1f} G per batch")

    variants = [Variant("ours fp32", _train_step(ours, ours_loss, None)),
                Variant("vitmae fp32", _train_step(hf, hf_loss, None))]
    # bf16 only pays where the hardware has bf16 matmul units; otherwise it is emulated and far slower.
    bf16_useful = peaks["bf16"] >= 0.8 * peaks["fp32"]
    if bf16_useful:
        variants.append(Variant("ours bf16 autocast", _train_step(ours, ours_loss, torch.bfloat16)))
    else:
        say(f"ours bf16 autocast: not timed, this {device.type}'s bf16 matmul runs at "
              f"{peaks['bf16'] / peaks['fp32']:.2f}x its fp32 rate (no native bf16)")
    if use_compile:
        compiled = torch.compile(ours)
        compiled_loss = lambda: compiled(images).loss  # noqa: E731
        dtype = torch.bfloat16 if bf16_useful else None
        name = "ours compiled " + ("bf16 autocast" if dtype else "fp32")
        start = time.perf_counter()
        step = _train_step(ours, compiled_loss, dtype)
        step()
        sync()
        say(f"{name}: compiled in {time.perf_counter() - start:.0f} s")
        variants.append(Variant(name, step))

    for variant in variants:  # warm-up: allocator, optimiser state, autotuning
        variant.step()
    sync()
    progress = tqdm(total=rounds * len(variants), desc="timing", unit="step", disable=not sys.stderr.isatty())
    # A matmul sample in every round: the peak is measured under the same load as the steps.
    peak_n = 8192 if on_gpu else 2048
    peak_a, peak_b = torch.randn(peak_n, peak_n, device=device), torch.randn(peak_n, peak_n, device=device)
    peak_samples: list[float] = []
    memory: dict[str, int] = {}
    for round_index in range(rounds):
        peak_samples.append(2 * peak_n**3 / _median_time(lambda: peak_a @ peak_b, sync, repeats=1, warmup=False))
        for variant in variants:
            if round_index == rounds - 1 and variant in variants[:2]:  # the last round also records memory
                memory[variant.name], seconds = _step_peak_memory(variant.step, device, sync)
            else:
                seconds = _median_time(variant.step, sync, repeats=1, warmup=False)
            variant.times.append(seconds)
            progress.update()
    progress.close()
    mask_seconds = _median_time(lambda: masks(batch, device=device), sync, repeats=20)

    for variant in variants:
        extra = f", peak memory +{memory[variant.name] / 2**20:.0f} MiB" if variant.name in memory else ""
        say(f"{variant.name}: {batch / variant.seconds:.1f} img/s (step {variant.seconds * 1e3:.0f} ms, "
              f"median of {len(variant.times)}){extra}")
    say("peak memory: " + ("torch.cuda.max_memory_allocated during one step above the memory before it" if on_gpu
                             else "peak RSS during one step (VmHWM, reset through /proc/self/clear_refs) above "
                                  "the RSS before it"))
    ours_fp32, hf_fp32 = variants[0], variants[1]
    say(f"mask generation (2x2 blocks, batch {batch}): {mask_seconds * 1e3:.2f} ms = "
          f"{mask_seconds / ours_fp32.seconds:.2%} of our fp32 step")
    achieved = flops["ours"] / ours_fp32.seconds
    peak_in_rounds = statistics.median(peak_samples)
    say(f"achieved: {achieved / 1e9:.1f} GFLOP/s in our fp32 step; fp32 matmul peak during the rounds "
        f"{peak_in_rounds / 1e9:.1f} GFLOP/s (median of {len(peak_samples)} samples taken between the steps)")
    say(f"mfu: {achieved / peak_in_rounds:.3f}")
    say(f"speedup_vs_hf: {hf_fp32.seconds / ours_fp32.seconds:.3f}")
    best = min((v for v in variants if v.name.startswith("ours")), key=lambda v: v.seconds)
    say(f"best mode: {best.name}")
    say(f"speedup_best_vs_hf_default: {hf_fp32.seconds / best.seconds:.3f}")
    return 0


def _train_step(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor],
                autocast_dtype: torch.dtype | None) -> Callable[[], None]:
    """forward + backward + AdamW step, optionally under autocast (loss in fp32 either way)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)
    device_type = params[0].device.type

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss = loss_fn()
        loss.backward()
        optimizer.step()

    return step


def _step_flops(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        loss_fn().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def _matmul_peak(device: torch.device, dtype: torch.dtype, sync: Callable[[], None]) -> float:
    """Best FLOP/s of a large square matmul (2048 on CPU, 8192 on GPU) at ``dtype``.

    A 512 probe comes first: where a precision is emulated (bf16 without bf16 units) the large
    matmul would take minutes, and the probe already says it is not worth using.
    """
    large = 8192 if device.type == "cuda" else 2048
    probe = _matmul_rate(512, device, dtype, sync, repeats=2)
    reference = probe if dtype == torch.float32 else _matmul_rate(512, device, torch.float32, sync, repeats=2)
    if probe < 0.25 * reference:
        return probe
    return _matmul_rate(large, device, dtype, sync, repeats=3)


def _matmul_rate(n: int, device: torch.device, dtype: torch.dtype, sync: Callable[[], None], repeats: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / _median_time(lambda: a @ b, sync, repeats=repeats, best=True)


def _median_time(fn: Callable[[], object], sync: Callable[[], None], repeats: int, best: bool = False,
                 warmup: bool = True) -> float:
    """Median (or best) seconds of ``fn`` over ``repeats`` calls after one warm-up call."""
    times = []
    for _ in range(repeats + (1 if warmup else 0)):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    times = times[1:] if warmup else times
    return min(times) if best else statistics.median(times)


def _step_peak_memory(step: Callable[[], None], device: torch.device, sync: Callable[[], None]) -> tuple[int, float]:
    """Run one step; return (bytes by which its peak memory exceeds the memory held before it, seconds)."""
    gc.collect()
    if device.type == "cuda":
        sync()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        seconds = _median_time(step, sync, repeats=1, warmup=False)
        return torch.cuda.max_memory_allocated(device) - before, seconds
    _trim_heap()
    try:
        before = _proc_status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as handle:  # resets VmHWM (Linux >= 4.0)
            handle.write("5")
    except OSError:  # no procfs: the process-wide high-water mark is the best available
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        seconds = _median_time(step, sync, repeats=1, warmup=False)
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024, seconds
    seconds = _median_time(step, sync, repeats=1, warmup=False)
    return (_proc_status_kib("VmHWM") - before) * 1024, seconds


def _profile(step: Callable[[], None]) -> None:
    step()  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        step()
    say(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def _trim_heap() -> None:
    """Return freed heap to the OS so the previous variant's memory does not hide this one's."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as handle:
        return int(re.search(rf"^{key}:\s+(\d+) kB", handle.read(), re.M).group(1))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()})"
