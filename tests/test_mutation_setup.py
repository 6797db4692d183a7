"""`make mutation` (docs/testing.md#mutation-testing): each module's globs select functions that exist in files mutmut
mutates, a wrong MODULE is refused before anything runs, and benchmarks/mutation_score.py counts mutmut's results as
mutmut reads them."""
import ast
import configparser
import fcntl
import fnmatch
import json
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO


def make(*args):
    return subprocess.run(['make', '-s', '--no-print-directory', '-C', str(REPO), *args], capture_output=True,
                          text=True, timeout=60)


def make_variable(name):
    return make('--eval', 'print-%: ; @echo $($*)', f'print-{name}').stdout.split()


MODULES = make_variable('MUTATION_MODULES')


def test_the_module_list_names_the_seven_parts_the_issue_asks_for():
    assert sorted(MODULES) == sorted(['loss', 'usanet', 'noise', 'step', 'sampler', 'checkpoint', 'options'])


def mutmut_names(path, module):
    """A name mutmut 3 gives a mutant of each function and method of ``path`` (numbered 10, so that the sampled globs,
    ending in ``0``, match it): ``module.x_function__mutmut_10``, ``module.xǁClassǁmethod__mutmut_10``."""
    names = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.append(f'{module}.x_{node.name}__mutmut_10')
        elif isinstance(node, ast.ClassDef):
            names += [f'{module}.xǁ{node.name}ǁ{item.name}__mutmut_10' for item in node.body
                      if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return names


@pytest.mark.parametrize('module', MODULES)
def test_each_glob_selects_a_function_of_a_file_mutmut_mutates(module):
    config = configparser.ConfigParser()
    config.read(REPO / 'setup.cfg')
    mutated = config['mutmut']['only_mutate'].split()
    globs = make_variable(f'MUTATION_{module}')
    assert globs, f'MUTATION_{module} is empty'
    for glob in globs:
        matching = [path for path in mutated
                    if glob.startswith(path.removesuffix('.py').replace('/', '.') + '.')]
        assert len(matching) == 1, f'{glob}: not in one of the files setup.cfg mutates ({mutated})'
        path = matching[0]
        names = mutmut_names(REPO / path, path.removesuffix('.py').replace('/', '.'))
        assert any(fnmatch.fnmatchcase(name, glob) for name in names), f'{glob} selects no function of {path}'


@pytest.mark.parametrize('module, message', [
    ('bogus', "MODULE: unknown module 'bogus'"), ('loss bogus', "unknown module 'bogus'"),
    ('l%', "unknown module 'l%'"), ('%', "unknown module '%'"), ('', 'MODULE is empty'), (' ', 'MODULE is empty')])
def test_a_wrong_module_is_refused_before_anything_runs(module, message, tmp_path):
    # an empty glob list would have mutmut mutate every function of every file: hours, not the module asked for;
    # refused when the makefile is read, before the set-up (a virtual environment that does not exist yet here)
    result = make('-n', 'mutation', f'MODULE={module}', f'VENV={tmp_path / "venv"}')
    assert result.returncode != 0
    assert message in result.stderr and 'expected some of: loss usanet sampler' in result.stderr
    assert result.stdout == ''


def test_a_module_without_globs_is_refused():
    result = make('-n', 'mutation', 'MODULE=loss', 'MUTATION_loss=')
    assert result.returncode != 0 and 'MUTATION_loss is empty; expected the globs of its mutants' in result.stderr
    assert result.stdout == ''


def test_a_module_runs_mutmut_on_its_globs_then_scores_them():
    commands = re.sub(r'\\\n\s*', '', make('-n', 'mutation', 'MODULE=sampler').stdout)  # continued lines joined
    assert "mutmut run --max-children 2 'usaid.data.resumable_sampler.*' && " in commands
    assert commands.rstrip().endswith("mutation_score.py --survivors 'sampler=usaid.data.resumable_sampler.*'")


def copy_with_mutants(folder):
    """``folder`` with this Makefile and a ``mutants/`` of an earlier run (no mutmut there: a run that gets past its
    checks fails at once, after removing ``mutants/``)."""
    folder.mkdir(exist_ok=True)
    shutil.copy(REPO / 'Makefile', folder / 'Makefile')
    (folder / 'mutants').mkdir()
    (folder / 'mutants' / 'results.txt').write_text('results of an earlier run')
    return folder


def make_mutation(*args, cwd):
    return subprocess.run(['make', '--no-print-directory', '-o', 'install', *args, 'mutation', 'MODULE=loss'],
                          cwd=cwd, capture_output=True, text=True, timeout=60)


def test_a_second_run_in_the_same_folder_is_refused_and_leaves_the_first_ones_mutants(tmp_path):
    copy = copy_with_mutants(tmp_path / 'copy')
    with open(copy / '.mutation.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a run in progress
        result = make_mutation(cwd=copy)
    assert result.returncode != 0
    assert (f'make mutation: another make mutation in {copy} holds .mutation.lock (its processes: fuser -v '
            '.mutation.lock); wait for it to end, or stop them') in result.stderr
    assert (copy / 'mutants' / 'results.txt').exists()
    result = make_mutation(cwd=copy)  # the lock released: this one starts (and fails without mutmut)
    assert result.returncode != 0 and 'holds .mutation.lock' not in result.stderr
    assert not (copy / 'mutants').exists()


def test_a_run_started_from_another_folder_is_refused_and_removes_nothing(tmp_path):
    copy = copy_with_mutants(tmp_path / 'copy')
    elsewhere = copy_with_mutants(tmp_path / 'elsewhere')
    result = make_mutation('-f', str(copy / 'Makefile'), cwd=elsewhere)
    assert result.returncode != 0
    assert f'make mutation runs in the folder of its Makefile, {copy}/, not in {elsewhere}' in result.stderr
    assert (copy / 'mutants' / 'results.txt').exists() and (elsewhere / 'mutants' / 'results.txt').exists()
    assert not (elsewhere / '.mutation.lock').exists()


# ---- benchmarks/mutation_score.py ----------------------------------------------------------------------------------

def score(*args, root):
    return subprocess.run([sys.executable, str(REPO / 'benchmarks' / 'mutation_score.py'), '--root', str(root),
                           *args], capture_output=True, text=True, timeout=60)


def test_the_score_counts_each_exit_code_as_mutmut_documents_it(tmp_path):
    # mutmut 3.8.1's table (mutmut/stats.py): 1 and 3 killed, 36 timeout, 0 survived, 33 no tests,
    # None not checked, 34 skipped, -11 segfault
    codes = {'a.x_f__mutmut_1': 1, 'a.x_f__mutmut_2': 3, 'a.x_f__mutmut_3': 36, 'a.x_f__mutmut_4': 0,
             'a.x_f__mutmut_5': 33, 'a.x_f__mutmut_6': None, 'a.x_f__mutmut_7': 34, 'a.x_f__mutmut_8': -11,
             'b.x_g__mutmut_1': 0}
    (tmp_path / 'pkg').mkdir()
    (tmp_path / 'pkg' / 'a.py.meta').write_text(json.dumps({'exit_code_by_key': {
        k: v for k, v in codes.items() if k.startswith('a.')}}))
    (tmp_path / 'b.py.meta').write_text(json.dumps({'exit_code_by_key': {'b.x_g__mutmut_1': 0}}))
    result = score('--survivors', 'first=a.x_f__mutmut_*', 'both=a.*,b.*', root=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:] if not line.startswith(' ')}
    # killed 3 (1, 3 and the timeout), survived 1, no tests 1, other 1, run 6 of 8 (2 not run): 3 / 6
    assert rows['first'] == ['3', '1', '1', '1', '6', '2', '50.0%']
    assert rows['both'] == ['3', '2', '1', '1', '7', '2', '42.9%']
    listed = re.findall(r'^    (\w[\w ]*) \((-?\d+)\): (\S+)$', result.stdout, re.MULTILINE)
    assert sorted(set(listed)) == sorted({('survived', '0', 'a.x_f__mutmut_4'), ('no tests', '33', 'a.x_f__mutmut_5'),
                                          ('other', '-11', 'a.x_f__mutmut_8'), ('survived', '0', 'b.x_g__mutmut_1')})


def test_without_results_the_score_says_to_run_make_mutation(tmp_path):
    result = score('loss=usaid.losses.*', root=tmp_path / 'missing')
    assert result.returncode == 2
    assert 'missing' in result.stderr and 'make mutation' in result.stderr
    (tmp_path / 'a.py.meta').write_text(json.dumps({'exit_code_by_key': {'a.x_f__mutmut_1': 1}}))
    result = score('loss', root=tmp_path)
    assert result.returncode == 2 and 'MODULE=GLOB' in result.stderr


def test_a_damaged_result_file_is_named(tmp_path):
    (tmp_path / 'a.py.meta').write_text('{"exit_code_by_key": {"a.x_f__mutmut_1"')  # cut short
    result = score('m=a.*', root=tmp_path)
    assert result.returncode == 2 and f'{tmp_path / "a.py.meta"}: not a mutmut result file' in result.stderr
    (tmp_path / 'a.py.meta').write_text('{"exit_code_by_key": [1]}')
    result = score('m=a.*', root=tmp_path)
    assert result.returncode == 2 and 'exit_code_by_key is list' in result.stderr


@pytest.mark.parametrize('codes, message', [
    ('[1]', "the exit code of 'a.x_f__mutmut_1' is [1]; expected an integer or null"),
    ('true', "is True; expected an integer or null"), ('1.0', 'is 1.0; expected an integer or null')])
def test_an_exit_code_that_is_not_an_integer_is_named(tmp_path, codes, message):
    (tmp_path / 'a.py.meta').write_text(f'{{"exit_code_by_key": {{"a.x_f__mutmut_1": {codes}}}}}')
    result = score('m=a.*', root=tmp_path)
    assert result.returncode == 2 and f'{tmp_path / "a.py.meta"}: not a mutmut result file' in result.stderr
    assert message in result.stderr


def test_globs_that_select_nothing_are_refused_and_a_module_is_scored_once(tmp_path):
    (tmp_path / 'a.py.meta').write_text(json.dumps({'exit_code_by_key': {'a.x_f__mutmut_1': 1, 'a.x_\x1b[2J': 0}}))
    result = score('m=a.*', 'loss=usaid.nothing.*', root=tmp_path)
    assert result.returncode == 2 and result.stdout == ''
    assert 'loss=usaid.nothing.*: selects none of the 2 mutants under' in result.stderr
    for spec in ('loss=', 'loss=,', '=a.*', 'loss= '):
        result = score(spec, root=tmp_path)
        assert result.returncode == 2 and f'{spec!r}: expected MODULE=GLOB' in result.stderr
    result = score('--survivors', 'm=a.*', 'm=a.*', root=tmp_path)
    assert result.returncode == 0 and result.stdout.count('\nm ') == 1
    assert "survived (0): 'a.x_\\x1b[2J'" in result.stdout and '\x1b' not in result.stdout  # printed, not run


def test_the_test_selection_names_test_files_and_folders_that_exist():
    config = configparser.ConfigParser()
    config.read(REPO / 'setup.cfg')
    selection = config['mutmut']['pytest_add_cli_args_test_selection'].split()
    assert selection and all((REPO / path).exists() and path.startswith('tests/') for path in selection)
    assert all((REPO / path).exists() for path in config['mutmut']['only_mutate'].split())
