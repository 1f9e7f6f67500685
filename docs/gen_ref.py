"""Generate the API reference pages at build time (run by the mkdocs-gen-files plugin).

One page per public module: every package whose ``__init__`` defines ``__all__`` (``d2lightning.engine``,
``d2lightning.config``...), and every module that defines ``__all__`` directly in the root package or in a
package that does not (``d2lightning.utils.events``, ``d2lightning.plot``...). A page documents each name of the
module's ``__all__``, read from the source without importing it: a name added to ``__all__`` is documented at
the next build, with no page to edit. Private modules (a ``_`` in the dotted path) are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "d2lightning"


def read_all(path: Path) -> list[str] | None:
    """The literal ``__all__`` of a source file, or None when it has none."""
    for node in ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            names = ast.literal_eval(value)
            if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
                raise ValueError(f"{path}: __all__ must be a literal list of strings")
            return list(names)
    return None


def dotted(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def public_modules() -> dict[str, list[str]]:
    """``{dotted name: __all__}`` of the modules that get a page."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = dotted(path)
        if "model_zoo.configs" in name or any(part.startswith("_") for part in name.split(".")):
            continue
        names = read_all(path)
        if names is None:
            continue
        if path.name != "__init__.py" and path.parent != PACKAGE and read_all(path.parent / "__init__.py") is not None:
            continue  # its package re-exports what it makes public
        found[name] = names
    return found


def write_pages() -> None:
    modules = public_modules()
    nav = mkdocs_gen_files.Nav()
    for module, names in modules.items():
        doc_path = Path("reference", *module.split(".")).with_suffix(".md")
        nav[(module,)] = doc_path.relative_to("reference").as_posix()
        with mkdocs_gen_files.open(doc_path, "w") as page:
            page.write(f"# `{module}`\n\n")
            page.write(f"::: {module}\n    options:\n      members: false\n      show_root_heading: false\n\n")
            for name in names:
                if f"{module}.{name}" in modules:  # a documented submodule (d2lightning.engine.hooks)
                    page.write(f"## `{name}`\n\nThe submodule [`{module}.{name}`][{module}.{name}].\n\n")
                else:
                    page.write(f"::: {module}.{name}\n\n")
    with mkdocs_gen_files.open("reference/SUMMARY.md", "w") as summary:
        summary.writelines(nav.build_literate_nav())


write_pages()
