"""Mutation score per module of the last ``make mutation`` run (docs/testing.md#mutation-testing).

Reads mutmut's result files (``mutants/usaid/**/*.py.meta``) and prints, for each module of ``make mutation`` and the
mutants its globs select (the functions that carry the method), how many were killed, survived, had no test, ended
otherwise, were run and were not run, and the score killed / run, from mutmut's own reading of each exit code. A
timeout is a kill (the mutant made a test hang); "other" (mutmut's suspicious, segfault, interrupted, ...: e.g. -9, a
test process killed from outside) counts as run and not killed, so it lowers the score. ``--survivors`` also lists
the mutants not killed, with their exit codes (``mutmut show NAME`` prints the change).

Usage: python benchmarks/mutation_score.py [--survivors] [--root mutants/usaid] MODULE=GLOB[,GLOB...] ...
"""
import argparse
import fnmatch
import json
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

# mutmut's own statuses, folded into the four this score counts; a timeout is a kill (the mutant made a test hang)
FOLDED = {'killed': 'killed', 'timeout': 'killed', 'survived': 'survived', 'no tests': 'no tests',
          'not checked': 'not run', 'skipped': 'not run'}


def results(root):
    """``{mutant name: exit code}`` of every mutant mutmut made under ``root``; ``ValueError`` naming a file that is
    not one of mutmut's result files (e.g. cut short when a run was killed)."""
    codes = {}
    for meta in sorted(Path(root).rglob('*.py.meta')):
        try:
            found = json.loads(meta.read_text())['exit_code_by_key']
            if not isinstance(found, dict):
                raise TypeError(f'exit_code_by_key is {type(found).__name__}')
            for name, code in found.items():
                if code is not None and (type(code) is not int):
                    raise TypeError(f'the exit code of {name!r} is {code!r}; expected an integer or null')
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError) as error:
            raise ValueError(f"{meta}: not a mutmut result file ({type(error).__name__}: {error}); expected mutmut's "
                             'JSON with exit_code_by_key: wait for a run in progress to end (it rewrites these '
                             'files), or run `make mutation` again') from None
        codes.update(found)
    return codes


def status(code):
    """killed, survived, no tests, not run, or other (suspicious, segfault, interrupted, ...)."""
    return FOLDED.get(status_by_exit_code[code], 'other')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('modules', nargs='+', metavar='MODULE=GLOB[,GLOB...]')
    parser.add_argument('--survivors', action='store_true', help='list the surviving mutants')
    parser.add_argument('--root', default='mutants/usaid', help="mutmut's copy of the package")
    args = parser.parse_args()
    modules = {}
    for spec in dict.fromkeys(args.modules):  # a module named twice is scored once
        module, equals, globs = spec.partition('=')
        if not (module.strip() and equals and globs.strip(', ')):
            parser.error(f'{spec!r}: expected MODULE=GLOB[,GLOB...]')
        modules[module] = [g for g in globs.split(',') if g]
    try:
        codes = results(args.root)
    except ValueError as error:
        parser.error(str(error))
    if not codes:
        parser.error(f'no mutmut results (*.py.meta) under {args.root}: run `make mutation` first')
    selected = {module: sorted(n for n in codes if any(fnmatch.fnmatchcase(n, g) for g in globs))
                for module, globs in modules.items()}
    for module, names in selected.items():
        if not names:
            parser.error(f"{module}={','.join(modules[module])}: selects none of the {len(codes)} mutants under "
                         f'{args.root}; expected globs of mutant names (mutmut results --all true lists them)')
    print(f"{'module':<12}{'killed':>8}{'survived':>10}{'no tests':>10}{'other':>7}{'run':>6}{'not run':>9}"
          f"{'score':>8}")
    for module, names in selected.items():
        counts = Counter(status(codes[n]) for n in names)
        run = len(names) - counts['not run']
        score = f"{100 * counts['killed'] / run:.1f}%" if run else '-'
        print(f"{module:<12}{counts['killed']:>8}{counts['survived']:>10}{counts['no tests']:>10}{counts['other']:>7}"
              f"{run:>6}{counts['not run']:>9}{score:>8}")
        if args.survivors:
            for name in names:
                if status(codes[name]) in ('survived', 'no tests', 'other'):
                    shown = name if name.isprintable() else ascii(name)  # a name is printed, never interpreted
                    print(f'    {status(codes[name])} ({codes[name]}): {shown}')

if __name__ == '__main__':
    main()
