"""The house: one import package, subpackages whose dependencies point one way, and no import cycles.

Read from the source (every import, including those inside functions), so a new module that
reaches up a layer fails here rather than in a reviewer's head. How long a function or a line may be is ruff's
to say (pyproject.toml: complexity and line length), not a line count here.
"""

import ast
from pathlib import Path

import tomllib

from tests.conftest import ROOT

# Where each part of the import package lives in the checkout (pyproject.toml's package-dir).
FOLDERS = {"oomladder": ROOT / "supervisor", "oomladder.strategies": ROOT / "strategies",
           "oomladder.configs": ROOT / "configs"}
# The vocabulary every part may use; it imports nothing else of oomladder's.
VOCABULARY = {"oomladder", "oomladder.errors", "oomladder.units", "oomladder.plan", "oomladder.classify",
              "oomladder.cost", "oomladder.status"}
# What each subpackage may import besides itself and the vocabulary: the data's path, one way.
MAY_IMPORT = {
    "worker": {"memory"},  # the estimator's pure arithmetic seeds the running step's memory model
    "process": {"worker"},  # the worker's file protocol (worker/protocol/files.py): both sides read one definition
    "record": set(),
    "strategies": set(),
    "configs": set(),
    "ladder": {"strategies"},
    "memory": {"ladder", "strategies", "record"},
    "nodes": {"record"},
    "views": {"record"},
    "run": {"process", "record", "ladder", "strategies", "memory", "nodes", "views", "worker"},
    "demo": {"run", "ladder", "views", "process", "record", "ladder", "strategies", "memory", "nodes", "worker"},
    "cli": {"run", "ladder", "views", "process", "record", "strategies", "memory", "nodes", "worker", "demo"},
    "__main__": {"cli"},
    "api": {"worker"},  # oomladder.api, the public API: the worker's code, under a name for programs
    "notebook": {"run", "process", "record", "ladder", "strategies", "memory", "nodes", "views", "worker"},
}
# The one edge up from the top package: `%load_ext oomladder` calls `oomladder.load_ipython_extension`, which imports
# the extension inside that function, in a kernel only.
IPYTHON_HOOK = ("oomladder", "oomladder.notebook.extension")


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if "demo" in parts and parts[-1] == "train_tiny":
                continue  # the demo's training script is a user's program, not part of the package's layers
            found[".".join((package, *parts))] = path
    return found


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n == "oomladder" or n.startswith("oomladder.")}


def part_of(module: str, known: dict[str, Path]) -> str | None:
    """The subpackage a module belongs to (None: the vocabulary), for a name that may be `pkg.attr`."""
    while module not in known and "." in module:
        module = module.rsplit(".", 1)[0]
    if module in VOCABULARY:
        return None
    return module.split(".")[1]


def test_the_installed_distribution_has_one_top_level_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {p.split(".")[0] for p in config["packages"]} == {"oomladder"}
    assert config["package-dir"] == {"oomladder": "supervisor", "oomladder.strategies": "strategies",
                                     "oomladder.configs": "configs"}


def test_every_package_folder_is_listed_for_the_wheel():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {name for name, path in modules().items() if path.name == "__init__.py"}
    assert packages == set(config["packages"])


def test_dependencies_point_one_way():
    known = modules()
    wrong = []
    for module, path in known.items():
        mine = part_of(module, known)
        for target in imports_of(path):
            if module == IPYTHON_HOOK[0] and (target + ".").startswith(IPYTHON_HOOK[1] + "."):
                continue
            theirs = part_of(target, known)
            if theirs is None or theirs == mine:
                continue
            if mine is None or theirs not in MAY_IMPORT[mine]:
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_there_are_no_import_cycles():
    known = modules()
    graph = {m: {t for t in (_module_of(i, known) for i in imports_of(p)) if t and t != m and (m, t) != IPYTHON_HOOK}
             for m, p in known.items()}
    # A package's __init__ re-exporting its own modules is not a cycle of the code's design.
    graph = {m: {t for t in ts if not (t.startswith(m + ".") and known[m].name == "__init__.py")} for m, ts in
             graph.items()}
    assert _cycles(graph) == []


def _module_of(name: str, known: dict[str, Path]) -> str | None:
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in known else None


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _one_element_lists(path: Path) -> list[str]:
    """Module-level names bound to a list of one element (`phase = ["train"]`): state kept in a box, which the
    worker keeps on its one state object instead (worker/state.py)."""
    found = []
    for node in ast.parse(path.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) \
            else []
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        if isinstance(value, ast.List) and len(value.elts) == 1:
            found += [f"{path.relative_to(ROOT)}: {ast.unparse(t)}" for t in targets]
    return found


def test_the_worker_keeps_its_state_on_one_object_not_in_module_level_boxes():
    boxes = [box for path in sorted((ROOT / "supervisor" / "worker").rglob("*.py")) for box in _one_element_lists(path)]
    assert boxes == []


def test_every_plan_field_has_its_row_in_the_trainers_table_or_says_where_it_goes():
    """A new rung's field is applied to a Trainer program in one place (worker/transformers/arguments.py)."""
    import dataclasses

    from oomladder.plan import Plan
    from oomladder.worker.transformers import arguments
    rows = set(arguments.APPLY) | set(arguments.ELSEWHERE)
    assert not set(arguments.APPLY) & set(arguments.ELSEWHERE)
    assert rows == {f.name for f in dataclasses.fields(Plan)}
