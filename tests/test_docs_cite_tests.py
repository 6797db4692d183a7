"""docs/errors.md names, for each bad input, the test that shows it: each named test file and test exists (a renamed
or deleted test would leave a row that promises what nothing checks)."""
import re

from tests.conftest import REPO

TESTS = REPO / 'tests'


def defined_tests():
    """``{file relative to tests/: the names of its test functions}``."""
    return {str(p.relative_to(TESTS)): set(re.findall(r'^(?:async )?def (test_\w+)', p.read_text(), re.MULTILINE))
            for p in TESTS.rglob('test_*.py')}


def cited(markdown):
    """``(file or None, test name or None)`` of each test the last column of the tables cites, as written:
    ``file.py::test_x``, ``test_x`` or ``file.py``."""
    for row in markdown.splitlines():
        if not row.startswith('|') or row.startswith('|---'):
            continue
        last = row.rstrip(' |').rsplit('|', 1)[-1]
        for code in re.findall(r'`([^`]+)`', last):
            match = re.fullmatch(r'(?:([\w/]+\.py))?(?:::)?(test_\w+)?(?:\[.*\])?', code.strip())
            if match and any(match.groups()):
                yield match.groups()


def cites(name, test):
    """A cited name is the test's whole name, or, ending in ``_``, the start shared by several tests' names."""
    return test == name or (name.endswith('_') and test.startswith(name))


def test_every_test_docs_errors_cites_exists():
    names = defined_tests()
    citations = list(cited((REPO / 'docs' / 'errors.md').read_text()))
    assert len(citations) > 100  # the table's test column was read
    missing = []
    for file, name in citations:
        file = file and file.removeprefix('tests/')
        files = [f for f in names if file is None or f == file or f.endswith('/' + file)]
        if not files:
            missing.append(f'{file}: no such test file')
        elif name and not any(cites(name, n) for f in (files if file else names) for n in names[f]):
            missing.append(f'{file or "tests"}::{name}')
    assert not missing, missing
