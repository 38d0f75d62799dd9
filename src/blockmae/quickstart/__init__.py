"""`blockmae quickstart`: the project's question on ShapeTex, answered first, then (with --train) your own run.

Does hiding b x b blocks of patches instead of single patches move a ViT from texture to shape? The
stages, in the order they run (blockmae.quickstart.run):

* the answer (``evaluate``): every shipped reference encoder (each arm at each pretraining seed) and a
  random-init encoder per seed index through the linear and k-NN probes and the ShapeTex shape-bias test,
  the diagnostics on the seed indices the settings name; verdicts over seeds for every pair of arms
  (blockmae.report.decisions, the policy of every report), with each seed's per-image tests as secondary detail (``comparisons``);
* your run, with --train (``budget``, then the engine): the same arms pretrained here for the budget, or
  in full with ``--from-scratch``; evaluated and compared with the references;
* reconstructions and figures (``figures``), ``summary.json`` and the report (blockmae.report.quickstart).

Every run lands in the registry of the output folder (``folder``: resume, refuse foreign folders), so
`blockmae runs --root DIR` lists them.
"""

from blockmae.quickstart.budget import fit_sizes
from blockmae.quickstart.cli import add_arguments, run
from blockmae.quickstart.config import (
    BASELINE,
    CPU_CONFIG,
    GPU_CONFIG,
    QuickstartConfig,
    arm_key,
    arm_name,
    arm_pretrain_config,
    load_quickstart_config,
)
from blockmae.quickstart.evaluate import load_quickstart_encoder, reference_evaluation
from blockmae.quickstart.folder import prepare_output

__all__ = ["BASELINE", "CPU_CONFIG", "GPU_CONFIG", "QuickstartConfig", "add_arguments", "arm_key", "arm_name",
           "arm_pretrain_config", "fit_sizes", "load_quickstart_config", "load_quickstart_encoder", "prepare_output",
           "reference_evaluation", "run"]
