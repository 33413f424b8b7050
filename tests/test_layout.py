"""The house rules of gapdiff_core (docs/architecture.md): packages in layers that import only downwards, no import
cycle between modules (lazy imports included), at most three modules at the root, none over 400 lines."""
import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "gapdiff_core"

#: Lowest first: a package may import from its own layer's or lower layers' packages, never from a higher one.
LAYERS = (
    ("common", "io", "samples"),
    ("model",),
    ("diffusion", "losses"),
    ("metrics",),
    ("preprocess",),
    ("attack",),
    ("protections", "training"),
    ("evaluation", "serving"),
    ("ui",),
    ("commands",),
    ("cli", "__init__"),
)
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(CORE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(module: str) -> bool:
    path = CORE.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def import_graph() -> dict[str, set[str]]:
    """Module -> the gapdiff_core modules it imports anywhere in its body (lazy imports count)."""
    graph = {}
    for path in sorted(CORE.rglob("*.py")):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = (package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else [])
                target = ".".join(base + ([node.module] if node.module else []))
                if target.split(".")[0] != "gapdiff_core":
                    continue
                for alias in node.names:  # `from pkg import module` imports the module
                    full = f"{target}.{alias.name}"
                    targets.add(full if _exists(full) else target)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.split(".")[0] == "gapdiff_core"}
        graph[name] = targets - {name}
    return graph


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_package_has_a_layer():
    packages = {_package(m) for m in import_graph()}
    assert packages <= set(LAYER_OF), f"add {sorted(packages - set(LAYER_OF))} to LAYERS and docs/architecture.md"


def test_no_import_runs_up_a_layer():
    upward = sorted(f"{a} -> {b}" for a, targets in import_graph().items() for b in targets
                    if LAYER_OF[_package(b)] > LAYER_OF[_package(a)])
    assert upward == []


def test_no_import_cycle():
    graph = import_graph()
    # a package's __init__ importing its own modules is no cycle: Python runs the __init__ first
    edges = {a: {b for b in targets if not (b.startswith(a + ".") or (a == "gapdiff_core"))}
             for a, targets in graph.items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_root_holds_at_most_three_modules():
    root = sorted(p.name for p in CORE.glob("*.py") if p.name != "__init__.py")
    assert len(root) <= 3, root


def test_no_module_is_over_400_lines():
    lengths = {p.relative_to(CORE).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
               for p in CORE.rglob("*.py")}
    assert {name: n for name, n in lengths.items() if n > MAX_LINES} == {}


def test_every_package_says_what_it_holds():
    missing = sorted(p.parent.name for p in CORE.rglob("__init__.py")
                     if not ast.get_docstring(ast.parse(p.read_text(encoding="utf-8"))))
    assert missing == []


def test_public_api_is_unchanged_by_the_layout():
    import gapdiff_core
    from gapdiff_core.model import checkpoint, generator, protector

    assert (gapdiff_core.Protector, gapdiff_core.protect) == (protector.Protector, protector.protect)
    assert (gapdiff_core.Generator, gapdiff_core.Discriminator) == (generator.Generator, generator.Discriminator)
    assert (gapdiff_core.load_generator, gapdiff_core.save_generator, gapdiff_core.GeneratorInfo,
            gapdiff_core.CheckpointError) == (checkpoint.load_generator, checkpoint.save_generator,
                                              checkpoint.GeneratorInfo, checkpoint.CheckpointError)
    from gapdiff_core.preprocess import jpeg_mask  # a contract of design.md
    assert callable(jpeg_mask)
