"""The tools are thin command lines over library modules: none imports another tool, nor does the benchmark."""
import ast

import pytest

from tests.conftest import REPO

TOOLS = REPO / 'usaid' / 'tools'


def imported_modules(source):
    """Every module ``source`` imports, with ``from package import name`` also giving ``package.name``."""
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f'{node.module}.{alias.name}' for alias in node.names)


@pytest.mark.parametrize('source', [*sorted(TOOLS.glob('*.py')), REPO / 'benchmarks' / 'bench.py'],
                         ids=lambda path: path.name)
def test_no_tool_imports_another_tool(source):
    tools = {f'usaid.tools.{path.stem}' for path in TOOLS.glob('*.py') if path.stem != '__init__'}
    assert sorted(tools & set(imported_modules(source))) == []
