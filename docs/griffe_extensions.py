"""griffe extensions for the API reference (mkdocstrings reads the sources with griffe, without importing them).

- :class:`ExternalReExports`: ``d2lightning.solver`` makes torch's ``LRScheduler`` public, as
  ``detectron2.solver`` does. griffe does not load torch's sources, so such a name cannot be rendered as the
  object it points to; it is documented instead as a short entry naming where it comes from, so that every name
  of every ``__all__`` is in the reference (and in its inventory).
- :class:`SphinxRoles`: the docstrings follow Google style with reST inline markup (as detectron2's and
  Lightning's do); Sphinx roles such as ``:class:`SimpleTrainer``` are shown as code in the Markdown site.
"""

from __future__ import annotations

import re
from typing import Any

import griffe


class ExternalReExports(griffe.Extension):
    """Replace each exported alias that points outside d2lightning (and cannot be resolved) with a stub entry."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name == "d2lightning":
            self._visit(pkg)

    def _visit(self, module: griffe.Module) -> None:
        for name in [str(n) for n in (module.exports or ())]:
            member = module.members.get(name)
            if member is None or not member.is_alias or member.target_path.startswith("d2lightning."):
                continue
            try:
                member.final_target  # noqa: B018  # resolvable: rendered as the object itself
            except griffe.AliasResolutionError:
                stub = griffe.Attribute(
                    name,
                    lineno=member.alias_lineno,
                    endlineno=member.alias_endlineno,
                    docstring=griffe.Docstring(f"`{member.target_path}`, re-exported here under the same name."),
                )
                module.set_member(name, stub)
        for submodule in module.modules.values():
            if not submodule.is_alias:
                self._visit(submodule)


_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|exc|obj|const):`(~?)([^`]+)`")


class SphinxRoles(griffe.Extension):
    """Show ``:class:`~pkg.Name``` (and the other Python roles) as the code span ``Name``."""

    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_code_span, obj.docstring.value)


def _code_span(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"
