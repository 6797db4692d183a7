"""Tests written for mutants of usaid/options.py and usaid/option_rules.py that survived `make mutation`
(docs/testing.md#mutation-testing)."""
import re

import pytest
import yaml

from tests.conftest import option_problems


@pytest.mark.parametrize('text', ['2E-4', '1e5', '5E3', '3e+2', '1.5e-3', '7e-05'])
def test_the_fix_offered_for_a_number_read_as_a_string_is_read_as_that_number(text):
    problems = [p for p in option_problems({'train': {'optim_g': {'type': 'Adam', 'lr': text}}})
                if p.startswith('train:optim_g:lr:')]
    assert len(problems) == 1, problems
    fix = re.search(r': write (\S+) or !!float (\S+)$', problems[0])
    assert fix and fix.group(2) == text, problems[0]
    assert yaml.safe_load(f'lr: {fix.group(1)}') == {'lr': float(text)}  # YAML 1.1 reads the fix as the number
