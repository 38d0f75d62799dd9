"""Reference encoders shipped with the package: trained MAEs (encoder + decoder, float16) with what made them.

Each reference is a folder ``resources/references/<id>/`` (id ``quickstart-block{b}-s{seed}``) holding
``model.safetensors`` (written by ``blockmae.models.io.save_mae``, so
``blockmae.models.factory.load_encoder`` takes its path as is and loads it into the float32 model),
``metrics.jsonl`` (the training run's, verbatim) and ``manifest.json``: checksums, the run's full config,
the command that trained it, versions, device, images seen, final loss, wall time and, when it was
measured, the evaluation.

- store: listing, finding and reading references (light: no engine, no models), exported here;
- verify: ``verify_reference`` checks one against its manifest; ``weights_arch``, ``loss_curve`` read it;
- package: ``package_reference`` builds a folder from a finished pretraining run dir;
- cli_list, cli_verify, cli_package: ``blockmae weights list | verify | package``.
"""

from blockmae.references.store import (
    MANIFEST_NAME, METRICS_NAME, REFERENCES_DIR, ROOT_ENV, SCHEMA, WEIGHTS_DTYPE, WEIGHTS_NAME, Reference, block_label,
    find_reference, list_references, load_reference, monitor_curve, reference_folders, reference_id, references_root,
)

__all__ = ["MANIFEST_NAME", "METRICS_NAME", "REFERENCES_DIR", "ROOT_ENV", "SCHEMA", "WEIGHTS_DTYPE", "WEIGHTS_NAME",
           "Reference", "block_label", "find_reference", "list_references", "load_reference", "monitor_curve",
           "reference_folders", "reference_id", "references_root"]
