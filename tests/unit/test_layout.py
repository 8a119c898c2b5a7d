"""The package layout: data flows one way. `store/` (the shared contracts) imports no stage; `workers/` and
`analysis/` import only `store/` and themselves; `orchestrator/` imports anything but the bench; no module
imports itself back through others (no import circles, function-level imports included)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("store", "workers", "analysis", "orchestrator", "hydra_plugins", "bench")
# what each package may import from the others
ALLOWED = {"store": set(), "workers": {"store"}, "analysis": {"store"},
           "orchestrator": {"store", "workers", "analysis"}, "hydra_plugins": {"orchestrator"},
           "bench": {"store", "workers", "analysis", "orchestrator"}}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The repository modules `name` imports (anywhere in the file), resolved to the longest known module."""
    def resolve(target: str) -> str | None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        return target or None

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m for m in map(resolve, targets) if m and m != name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def test_no_stage_imports_one_it_feeds_or_the_bench():
    wrong = [(a, b) for a, targets in graph().items() for b in targets
             if a.split(".")[0] != b.split(".")[0] and b.split(".")[0] not in ALLOWED[a.split(".")[0]]]
    assert wrong == []


def test_no_import_circles():
    edges = graph()
    circles, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(edges[node]):
            if state.get(target) == "open":
                circles.append(trail[trail.index(target):] + [target])
            elif target not in state:
                visit(target, trail + [target])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert circles == []


def test_the_checker_sees_an_upward_import_and_a_circle(tmp_path, monkeypatch):
    """The two checks above fail on a layout that breaks them (so they are not vacuous)."""
    for package, body in (("store", "from workers import w\n"), ("workers", "import store.s\n")):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
        (tmp_path / package / ("s.py" if package == "store" else "w.py")).write_text(body)
    for package in PACKAGES[2:]:
        (tmp_path / package).mkdir()
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    edges = graph()
    assert "workers.w" in edges["store.s"] and edges["workers.w"] == {"store.s"}
    for check in (test_no_stage_imports_one_it_feeds_or_the_bench, test_no_import_circles):
        try:
            check()
        except AssertionError:
            continue
        raise AssertionError(f"{check.__name__} passed on a broken layout")
