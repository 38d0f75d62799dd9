"""The layer contract (docs/architecture.md), checked from the source: a module imports only its own layer
and the layers below; no import cycles; a function-local import only for a heavy optional package
(transformers, matplotlib, submitit, playwright; scipy, a test extra), with a comment saying why.

Run in CI by .ci/run; `python -m pytest tests/test_layers.py` locally.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# High to low: a module may import its own layer and the ones below.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("cli", ("blockmae.cli", "blockmae.__main__", "blockmae.references.cli_list", "blockmae.references.cli_verify",
             # `weights package` measures the packaged encoder with the quickstart's evaluation
             "blockmae.references.cli_package", "blockmae.visualisation.cli",
             # `blockmae pretrain` runs the online monitor (evaluation) around the engine's pretraining
             "blockmae.engine.cli", "blockmae.mvh.cli_benchmark")),
    ("apps", ("blockmae.quickstart", "blockmae.sweep", "blockmae.report", "blockmae.bench", "blockmae.mvh.figures")),
    # model-vs-human: decision makers run encoders (diagnostics' preprocessing); distortions are image filters
    ("diagnostics, finetune", ("blockmae.diagnostics", "blockmae.finetune", "blockmae.mvh.decisions",
                               "blockmae.mvh.distortions")),
    ("evaluation, references", ("blockmae.evaluation", "blockmae.references")),
    ("engine", ("blockmae.engine",)),
    # blockmae.mvh: trials, conditions, categories and metrics are pure data-level code
    ("models, data", ("blockmae.models", "blockmae.data", "blockmae.visualisation.reconstructions", "blockmae.mvh")),
    # report.stats: pure statistics (no imports of its own), used from the diagnostics up
    # lock: the run-dir lock (errors, fileio, registry below it), also guarding commands' outputs (output_lock)
    ("foundations", ("blockmae.masking", "blockmae.config", "blockmae.fileio", "blockmae.errors", "blockmae.registry",
                     "blockmae.text", "blockmae.normalisation", "blockmae.visualisation", "blockmae.report.stats",
                     "blockmae.lock", "blockmae")),
]
HEAVY_OPTIONAL = ("transformers", "matplotlib", "submitit", "playwright", "scipy")
# Internal imports inside a function, each with the reason it is not at the top (none left).
ALLOWED_LOCAL: set[tuple[str, str]] = set()


def layer_of(name: str) -> int:
    best, index = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and len(p) > best:
                best, index = len(p), i
    assert index is not None, name
    return index


@dataclass(frozen=True)
class Import:
    importer: str
    target: str
    line: int
    local: bool  # inside a function or class
    external: bool
    commented: bool


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(root: Path, sources: dict[str, str] | None = None) -> tuple[set[str], list[Import]]:
    files = {module_name(root, p): p.read_text() for p in sorted((root / "blockmae").rglob("*.py"))}
    files.update(sources or {})
    modules = set(files)
    found = []
    for name, text in files.items():
        tree = ast.parse(text)
        lines = text.splitlines()
        package = name if name in files and (root / Path(*name.split("."), "__init__.py")).exists() else name.rsplit(".", 1)[0]
        top_level = {id(n) for n in tree.body}
        type_checking = set()
        for node in tree.body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                type_checking |= {id(n) for n in ast.walk(node)}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in type_checking:
                continue
            local = id(node) not in top_level
            before = lines[node.lineno - 2] if node.lineno >= 2 else ""
            commented = "#" in lines[node.lineno - 1] or before.strip().startswith("#")
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
            else:
                targets = [a.name for a in node.names]
            for t in targets:
                internal = t == "blockmae" or t.startswith("blockmae.")
                found.append(Import(name, t, node.lineno, local, not internal, commented))
    return modules, found


def violations(root: Path, sources: dict[str, str] | None = None) -> list[str]:
    modules, imports = imports_of(root, sources)
    packages = {m.rsplit(".", 1)[0] for m in modules if "." in m}
    out = []
    for imp in imports:
        if imp.external:
            if imp.local and not (imp.target.split(".")[0] in HEAVY_OPTIONAL and imp.commented):
                out.append(f"{imp.importer}:{imp.line}: function-local import of {imp.target} (only "
                           f"{', '.join(HEAVY_OPTIONAL)} may be, with a comment saying why)")
            continue
        if imp.local and (imp.importer, imp.target) not in ALLOWED_LOCAL:
            out.append(f"{imp.importer}:{imp.line}: function-local import of {imp.target}: import it at the top")
        if imp.target.startswith(imp.importer + ".") and imp.importer in packages:
            continue  # a package's __init__ shows its own modules
        a, b = layer_of(imp.importer), layer_of(imp.target)
        if b < a:
            out.append(f"{imp.importer}:{imp.line}: imports {imp.target}, a higher layer "
                       f"({LAYERS[b][0]} above {LAYERS[a][0]})")
    out += [f"import cycle: {' -> '.join(c)}" for c in cycles(modules, imports)]
    return out


def cycles(modules: set[str], imports: list[Import]) -> list[list[str]]:
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports:
        if not imp.external and not imp.local and imp.target in graph:
            graph[imp.importer].add(imp.target)
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_blockmae_keeps_its_layers():
    assert violations(SRC) == []


def test_a_lower_layer_importing_a_higher_one_breaks_the_contract():
    """The check can fail: masking (a foundation) importing the engine, a cycle, a hidden import."""
    bad = {"blockmae.masking.uses_engine": "from blockmae.engine.loop import TrainingLoop\n",
           "blockmae.fileio_twin": "import blockmae.text_twin\n",
           "blockmae.text_twin": "import blockmae.fileio_twin\n",
           "blockmae.models.hidden": "def f():\n    from blockmae.data import load_dataset\n    import torch\n"}
    found = violations(SRC, bad)
    assert ("blockmae.masking.uses_engine:1: imports blockmae.engine.loop, a higher layer (engine above "
            "foundations)") in found
    assert "import cycle: blockmae.fileio_twin -> blockmae.text_twin" in found
    assert ("blockmae.models.hidden:2: function-local import of blockmae.data.load_dataset: import it at the top"
            in found or "blockmae.models.hidden:2: function-local import of blockmae.data: import it at the top" in found)
    assert any(v.startswith("blockmae.models.hidden:3: function-local import of torch") for v in found)
    assert len(found) == 4, found
