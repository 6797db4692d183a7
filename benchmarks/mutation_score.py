"""Mutation score per module of the last ``make mutation`` run (docs/testing.md#mutation-testing).

Reads mutmut's result files (``mutants/usaid/**/*.py.meta``) and prints, for each module of ``make mutation`` and the
mutants its globs select (the functions that carry the method), how many were killed, survived, timed out or had no
test, and the score killed / (total - not run). A timeout counts as killed (the mutant made a test hang), as mutmut
counts it. ``--survivors`` also lists the surviving mutants' names (``mutmut show NAME`` prints the change).

Usage: python benchmarks/mutation_score.py [--survivors] MODULE=GLOB[,GLOB...] ...
"""
import argparse
import fnmatch
import json
from collections import Counter
from pathlib import Path

KILLED = {1: 'killed', 3: 'killed', 36: 'killed', -24: 'killed', 24: 'killed', 152: 'killed', 255: 'killed'}
OTHER = {0: 'survived', 33: 'no tests', 5: 'no tests', None: 'not run', 34: 'not run'}


def results(root):
    """``{mutant name: exit code}`` of every mutant mutmut made under ``root``."""
    codes = {}
    for meta in Path(root).rglob('*.py.meta'):
        codes.update(json.loads(meta.read_text())['exit_code_by_key'])
    return codes


def status(code):
    return KILLED.get(code) or OTHER.get(code) or 'suspicious'


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('modules', nargs='+', metavar='MODULE=GLOB[,GLOB...]')
    parser.add_argument('--survivors', action='store_true', help='list the surviving mutants')
    parser.add_argument('--root', default='mutants/usaid', help="mutmut's copy of the package")
    args = parser.parse_args()
    codes = results(args.root)
    print(f"{'module':<12}{'killed':>8}{'survived':>10}{'no tests':>10}{'other':>7}{'total':>7}{'score':>8}")
    for spec in args.modules:
        module, _, globs = spec.partition('=')
        names = sorted(n for n in codes if any(fnmatch.fnmatchcase(n, g) for g in globs.split(',')))
        counts = Counter(status(codes[n]) for n in names)
        run = len(names) - counts['not run']
        other = counts['suspicious']
        score = f"{100 * counts['killed'] / run:.1f}%" if run else '-'
        print(f"{module:<12}{counts['killed']:>8}{counts['survived']:>10}{counts['no tests']:>10}{other:>7}"
              f'{run:>7}{score:>8}')
        if args.survivors:
            for name in names:
                if status(codes[name]) in ('survived', 'no tests', 'suspicious'):
                    print(f'    {status(codes[name])}: {name}')


if __name__ == '__main__':
    main()
