"""Texture-vs-shape diagnostics of frozen encoders, one module each, on shared modules: plugin.py (the
Diagnostic interface, its result and helpers), probes.py (encoder and probe), context.py (the evaluation
context, image and output helpers), runner.py (common arguments, `command`, a run and its outputs).

Adding one: a new module with a `plugin.Diagnostic` subclass and `add_arguments, run = runner.command(Cls)`,
a row in `DIAGNOSTICS` (it becomes `blockmae eval NAME`, and the sweep and the quickstart find it by name),
optionally a thin `eval/<script>.py` (see docs/diagnostics.md).
"""

# (name, module, one-line help): the `blockmae eval NAME` commands that are diagnostics. This package's
# __init__ stays free of imports: `blockmae --help` reads this list.
DIAGNOSTICS: tuple[tuple[str, str, str], ...] = (
    ("lowpass", "blockmae.diagnostics.lowpass", "accuracy under Gaussian and Fourier low-pass filtering"),
    ("highpass", "blockmae.diagnostics.highpass", "accuracy under Gaussian and Fourier high-pass filtering"),
    ("stylized", "blockmae.diagnostics.stylized", "stylised transfer: Stylized-ImageNet or amplitude-phase swaps"),
    ("dtd", "blockmae.diagnostics.dtd", "DTD texture transfer beside the object-dataset probe"),
    ("mvh", "blockmae.diagnostics.mvh", "model-vs-human's datasets: trial files, 16-class accuracy, shape bias"),
    ("attention", "blockmae.diagnostics.attention_rollout",
     "attention rollout under occlusion: stability, entropy, distance"),
)
