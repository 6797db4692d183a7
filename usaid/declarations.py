"""Typed option declarations: each component states its options once, next to its code.

A declaration is a frozen dataclass derived from :class:`Declaration`: one field per option, its type annotation the
kinds of value it takes (``int``, ``float``, ``bool``, ``str``, ``Literal[...]`` choices, ``X | None``, ``tuple[float,
...]`` lists, a nested declaration, a mapping naming a registered component), and its :func:`option` the default, the
range and one line of documentation. From it:

- the component builds (``Options.parse(opt, 'USANet')``: defaults filled in, every problem in one ``ValueError``);
- the option check (:mod:`usaid.options`) validates an option file, every problem at once, with key paths and the
  closest valid names; classes and functions without a declaration (BasicSR's own) are validated against their
  signature (:func:`fields_of`);
- the option reference and the JSON Schema are generated (:mod:`usaid.option_reference`).

Rules between several options of one component are the declaration's :meth:`Declaration.rules`; rules between
sections live in :mod:`usaid.option_rules`.
"""
import dataclasses
import difflib
import inspect
import math
import numbers
import os
import re
import types
import typing
from typing import Annotated, Any, Literal, Union, get_args, get_origin

REQUIRED = dataclasses.MISSING

# What YAML 1.1 (PyYAML) leaves a string although it reads as a number: 2e-4, 1e3 (reported once, by the option check)
NUMBER_LIKE = re.compile(r'^[-+]?(\d[\d_]*\.?[\d_]*|\.\d[\d_]*)([eE][-+]?\d+)?$')


def option(default=REQUIRED, doc='', *, minimum=None, maximum=None):
    """A declaration's field: its ``default`` (:data:`REQUIRED` if none), a one-line ``doc``, and an inclusive range
    for numbers."""
    metadata = {'doc': doc, 'minimum': minimum, 'maximum': maximum}
    if isinstance(default, (list, dict)):
        raise TypeError('a mutable default: declare a tuple, or None')
    return dataclasses.field(default=default, metadata=metadata)


class Registered:
    """A mapping whose ``type`` names an entry of ``table`` (a BasicSR registry or a plain dict of classes), checked
    against that entry's declaration. ``passed`` arguments come from the caller, not from the options; ``extra`` is a
    declaration of keys that the caller reads besides the entry's own (BasicSR's ``better`` of a metric);
    ``declarations`` declare entries that have no declaration of their own (BasicSR's metrics)."""

    def __init__(self, table, what, expected=None, passed=(), extra=None, declarations=None):
        self.table, self.what, self.expected, self.passed, self.extra = table, what, expected, passed, extra
        self.declarations = declarations or {}  # name -> declaration, for entries whose signature says too little

    def names(self):
        return [str(name) for name in self.table.keys()]

    def lookup(self, name):
        """The class or function ``name`` stands for (BasicSR's ``_basicsr`` suffix rule included), or None."""
        if name in self.declarations:
            return self.declarations[name]
        if name in self.table:
            return self.table.get(name) if hasattr(self.table, '_obj_map') else self.table[name]
        if f'{name}_basicsr' in self.table:
            return self.table.get(name)
        return None


class ExistingFile:
    """A string naming an existing file, or one of ``words`` (e.g. 'imagenet', 'none')."""

    def __init__(self, *words, what='file'):
        self.words, self.what = words, what

    def __repr__(self):
        return f'ExistingFile{(*self.words, self.what)!r}'


class MissingFileError(ValueError, FileNotFoundError):
    """Options that name a file that does not exist: a bad option, and a missing file."""


class Declaration:
    """Base of the declarations: a frozen, keyword-only dataclass of options, built by :meth:`parse`. Class
    attributes: ``owner`` (the name in messages, for a section), ``kind`` ('argument' of a class, 'option' of a
    section) and ``open`` (other keys are allowed: a section whose keys this project cannot know)."""
    open = False

    def rules(self):
        """Problems between this component's options, as ``(key, text)`` pairs: a rule that no single type states."""
        return ()

    @classmethod
    def parse(cls, values, owner, ignore=()):
        """The options ``values`` (a mapping) as an instance of this declaration, defaults filled in; a ``ValueError``
        naming ``owner`` and every problem otherwise (a :class:`MissingFileError` when one is a missing file).
        ``ignore``: keys that are not this component's (those BasicSR reads from the same mapping)."""
        checker = Check()
        parsed = checker.declaration(cls, {k: v for k, v in values.items() if k not in ignore}, '')
        if checker.problems:
            kind = MissingFileError if checker.missing_file else ValueError
            raise kind(f'{owner}: ' + '; '.join(checker.problems))
        return parsed


def declared(cls):
    """Class decorator for a component with a declaration ``cls.Options``: its docstring gets the list of the
    options, and an ``__init__(self, ..., **options)`` (an architecture, a loss) gets them in its signature (keyword
    arguments with the declared defaults), both generated from the one declaration."""
    init = cls.__init__
    parameters = inspect.signature(init).parameters.values()
    indent = '        '
    if any(p.kind == p.VAR_KEYWORD for p in parameters):
        params = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                    default=inspect.Parameter.empty if f.default is REQUIRED else f.default,
                                    annotation=f.type) for f in dataclasses.fields(cls.Options)]
        init.__signature__ = inspect.Signature([*(p for p in parameters if p.kind != p.VAR_KEYWORD), *params])
    else:  # one mapping of options, as BasicSR's datasets take: the options are listed under it
        indent += '    '
    doc = (cls.__doc__ or '').rstrip()
    cls.__doc__ = doc + ('' if 'Args:' in doc else '\n\n    Args:') + ''.join(
        f'\n{indent}{line}' for line in argument_lines(cls.Options)) + '\n'
    return cls


def argument_lines(declaration):
    """``name (type): doc; kinds of value. Default: value.`` for each option of ``declaration``, as in BasicSR's
    docstrings."""
    lines = []
    for spec in fields_of(declaration).specs.values():
        default = ' Required.' if spec.required else f' Default: {spec.default!r}.'
        lines.append(f'{spec.name} ({python_type(spec.type)}): {spec.doc}; {describe_type(spec.type)}'
                     f'{range_text(spec)}.{default}')
    return lines


def python_type(tp):
    """The Python type a value of ``tp`` has, as a docstring names it: str, int, float, bool, list, dict."""
    base, meta = annotated_parts(tp)
    if meta is not None:
        return python_type(base)
    names = []
    for member in union_members(base):
        member = annotated_parts(member)[0]
        if member is type(None):
            continue
        if get_origin(member) is Literal:
            name = ' | '.join(sorted({type(choice).__name__ for choice in get_args(member)}))
        elif get_origin(member) in (tuple, list) or member is list:
            name = 'list'
        elif get_origin(member) is dict or is_declaration(member) or member is dict:
            name = 'dict'
        else:
            name = getattr(member, '__name__', 'any')
        names.append(name)
    return ' | '.join(dict.fromkeys(names)) + (', optional' if type(None) in union_members(base) else '')


def range_text(spec):
    """`` from 1`` / `` from 0 to 1``: an option's range, in words."""
    if spec.minimum is not None and spec.maximum is not None:
        return f', from {spec.minimum} to {spec.maximum}'
    if spec.minimum is not None:
        return f', at least {spec.minimum}'
    return f', at most {spec.maximum}' if spec.maximum is not None else ''


@dataclasses.dataclass(frozen=True)
class Spec:
    """One option, from a declaration or from a signature."""
    name: str
    type: Any
    default: Any
    doc: str = ''
    minimum: Any = None
    maximum: Any = None

    @property
    def required(self):
        return self.default is REQUIRED


@dataclasses.dataclass(frozen=True)
class Fields:
    """The options of a declaration or signature: ``specs`` by name; ``open`` if it takes any other key (``**kwargs``);
    ``kind`` 'argument' for a class or function, 'option' for a section."""
    owner: str
    specs: dict
    open: bool = False
    kind: str = 'argument'
    declaration: Any = None


def fields_of(target, passed=()):
    """The options of ``target``: a declaration, a component with one (its ``Options``), or else the signature of a
    class or function, each parameter typed like its default (BasicSR's classes and functions, torch's optimizers)."""
    if is_declaration(target):
        # a component's nested Options are named after the component: GaussianNoiseDataset.Options
        owner = getattr(target, 'owner', target.__qualname__.split('.')[0])
        declaration = target
    else:
        declaration, owner = getattr(target, 'Options', None), getattr(target, '__name__', str(target))
    if is_declaration(declaration):
        hints = typing.get_type_hints(declaration, include_extras=True)
        specs = {f.name: Spec(f.name, hints[f.name], f.default, f.metadata.get('doc', ''), f.metadata.get('minimum'),
                              f.metadata.get('maximum'))
                 for f in dataclasses.fields(declaration) if f.name not in passed}
        return Fields(owner, specs, open=declaration.open, kind=getattr(declaration, 'kind', 'argument'),
                      declaration=declaration)
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return Fields(owner, {}, open=True)
    specs = {}
    for p in signature.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in passed or p.name == 'self':
            continue
        default = REQUIRED if p.default is p.empty else p.default
        specs[p.name] = Spec(p.name, _type_of_default(default), default)
    takes_any = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
    return Fields(owner, specs, open=takes_any)


def is_declaration(target):
    return isinstance(target, type) and dataclasses.is_dataclass(target) and issubclass(target, Declaration)


def _type_of_default(default):
    """The type a signature's default stands for: a number for a number, a list for a list, anything for None."""
    if isinstance(default, bool):
        return bool
    if isinstance(default, (int, float)):  # torch and BasicSR write 0 for float arguments (weight_decay=0)
        return float
    if isinstance(default, str):
        return str
    if isinstance(default, (list, tuple)):
        return tuple[float, ...] if default and all(_is_number(d) for d in default) else list
    if isinstance(default, dict):
        return dict
    return Any


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value):
    """A real number (NumPy's too), finite: no option of a restoration run means NaN or infinity."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def type_name(value):
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return 'an integer' if isinstance(value, numbers.Integral) else 'a number'
    return {bool: 'a boolean', str: 'a string', list: 'a list', tuple: 'a list', dict: 'a mapping',
            type(None): 'null'}.get(type(value), type(value).__name__)


def found(value):
    return f'found {value!r} ({type_name(value)})' if value is not None else 'found nothing (null)'


def closest(name, names):
    """The names closest to ``name``, for a message; the first few names if none is close."""
    close = difflib.get_close_matches(str(name), [str(n) for n in names], n=3, cutoff=0.5)
    if close:
        return f" (closest: {', '.join(close)})"
    names = sorted(str(n) for n in names)
    return f" (one of: {', '.join(names[:12])}{', ...' if len(names) > 12 else ''})"


def annotated_parts(tp):
    """``(base, metadata)`` of an ``Annotated`` type, ``(tp, None)`` otherwise."""
    if get_origin(tp) is Annotated:
        base, *meta = get_args(tp)
        return base, meta[0]
    return tp, None


def union_members(tp):
    if get_origin(tp) in (Union, types.UnionType):
        return get_args(tp)
    return (tp,)


def describe_type(tp):
    """What a value of type ``tp`` is, in a message and in the docs: 'an integer', 'one of fp32, bf16', ..."""
    base, meta = annotated_parts(tp)
    if isinstance(meta, str):  # Annotated[tuple[int, ...], 'a list of iterations']: the words for this option
        return meta
    if isinstance(meta, Registered):
        return meta.expected or f'a mapping with the type of a registered {meta.what}'
    if isinstance(meta, ExistingFile):
        words = ', '.join(meta.words)
        return f'{words} or the path of an existing {meta.what}' if words else f'the path of an existing {meta.what}'
    members = [m for m in union_members(base) if m is not type(None)]
    if len(members) > 1 or (members and members[0] is not base):
        return ' or '.join(describe_type(m) for m in members)
    if get_origin(base) is Literal:
        return f"one of {', '.join(map(str, get_args(base)))}"
    if get_origin(base) in (tuple, list):
        return 'a list of numbers' if get_args(base)[:1] in ((float,), (int,)) else 'a list'
    if get_origin(base) is dict:
        return f'a mapping of names to {describe_type(get_args(base)[1])}'
    if is_declaration(base):
        return 'a mapping'
    return {bool: 'true or false', int: 'an integer', float: 'a number', str: 'a string', dict: 'a mapping',
            list: 'a list'}.get(base, 'any value')


class Check:
    """Collects problems as ``'key:path: found ...; expected ...'`` lines while validating values against declarations
    and signatures. ``missing_file`` is set when a problem is a file that does not exist."""

    def __init__(self, number_strings=True):
        self.number_strings = number_strings  # False where a walk over the whole file reports them once
        self.problems = []
        self.missing_file = False

    def problem(self, key, text):
        self.problems.append(f'{key}: {text}' if key else text)

    def declaration(self, target, values, path, passed=(), extra=None, is_open=None, owner=None):
        """``values`` checked against ``fields_of(target)`` (plus the ``extra`` declaration's keys; other keys
        allowed if ``is_open``; ``owner`` names it in messages); returns an instance of the declaration with
        defaults filled in, or the values themselves for a signature."""
        fields = fields_of(target, passed)
        if is_open is not None:
            fields = dataclasses.replace(fields, open=is_open)
        specs = dict(fields.specs)
        if extra is not None:
            specs.update(fields_of(extra).specs)
        name = owner or fields.owner
        if not isinstance(values, dict):
            self.problem(path, f'{found(values)}; expected a mapping of options')
            return None
        missing = [key for key, spec in specs.items() if spec.required and key not in values]
        before = len(self.problems)
        converted = {}
        hinted = {}  # an unknown key that is the misspelling of a missing one is reported once, with it
        for key in missing:
            close = difflib.get_close_matches(key, [str(k) for k in values if k not in specs], n=1, cutoff=0.7)
            if close:
                hinted[close[0]] = key
        for key, value in values.items():
            key_path = f'{path}:{key}' if path else str(key)
            if key in specs:
                converted[key] = self.value(specs[key], value, key_path)
            elif str(key) not in hinted and not fields.open:
                kind_text = 'an argument' if fields.kind == 'argument' else 'an option'
                self.problem(key_path, f"is not {kind_text} of {name}; expected one of "
                                       f"{', '.join(specs) or 'no options'}{closest(key, specs)}")
        for key in missing:
            key_path = f'{path}:{key}' if path else key
            spec = specs[key]
            hint = next((f' (is {k!r} a misspelling?)' for k, v in hinted.items() if v == key), '')
            if fields.kind == 'argument':
                self.problem(key_path, f'missing; expected a value: {name} requires it{hint}')
            else:
                kind_text = 'a mapping' if python_type(spec.type) == 'dict' else describe_type(spec.type)
                self.problem(key_path, f'missing; expected {kind_text}{hint}')
        if fields.declaration is None:
            return values
        if len(self.problems) > before:
            return None
        parsed, *extras = [declaration(**{k: v for k, v in converted.items() if k in declaration.__dataclass_fields__})
                           for declaration in (fields.declaration, extra) if is_declaration(declaration)]
        for key, text in [rule for instance in (parsed, *extras) for rule in instance.rules()]:
            self.problem(f'{path}:{key}' if path else key, text)
        return parsed

    def value(self, spec, value, path):
        """One value against its option's type and range; returns it, a nested declaration parsed."""
        tp = spec.type
        outer, meta = annotated_parts(tp)
        members = [(outer, meta)] if meta is not None else [annotated_parts(m) for m in union_members(outer)]
        members = [(base, None if isinstance(meta, str) else meta) for base, meta in members]  # words only
        if value is None and any(base in (type(None), Any) for base, _ in members):
            return value
        if not self.number_strings and isinstance(value, str) and NUMBER_LIKE.match(value.strip()) and any(
                base in (int, float) or get_origin(base) in (tuple, list) for base, _ in members):
            return value  # reported once, by the walk over strings that read as numbers
        for base, meta in members:
            if isinstance(meta, Registered):
                self.registered(value, path, meta)
                return value
            if isinstance(meta, ExistingFile):
                if not (isinstance(value, str) and (value in meta.words or os.path.isfile(os.path.expanduser(value)))):
                    self.missing_file = isinstance(value, str)
                    self.problem(path, (f'{value} does not exist' if isinstance(value, str) else found(value))
                                 + f'; expected {describe_type(tp)}')
                return value
        if isinstance(value, float) and not math.isfinite(value) and any(base in (int, float) for base, _ in members):
            self.problem(path, f'found {value}; expected a finite number')
            return value
        matched = [base for base, _ in members if base is not type(None) and self._fits(base, value)]
        if not matched:
            text = 'found nothing (null)' if value is None else found(value)
            self.problem(path, f'{text}; expected {describe_type(tp)}')
            return value
        member = matched[0]
        if is_declaration(member):
            return self.declaration(member, value, path)
        if get_origin(member) is dict:
            for key, item in value.items():
                self.value(Spec(key, get_args(member)[1], REQUIRED), item, f'{path}:{key}')
        elif _is_number(value) and (spec.minimum is not None or spec.maximum is not None):
            if (spec.minimum is not None and value < spec.minimum) or (
                    spec.maximum is not None and value > spec.maximum):
                bounds = ' and '.join(f'{op} {bound}' for op, bound in (('>=', spec.minimum), ('<=', spec.maximum))
                                      if bound is not None)
                self.problem(path, f'found {value}; expected a number {bounds}')
        return value

    @staticmethod
    def _fits(member, value):
        if member is Any:
            return True
        if get_origin(member) is Literal:
            return any(value == choice and type(value) is type(choice) for choice in get_args(member))
        if member is bool:
            return isinstance(value, bool)
        if member is int:
            return _is_int(value)
        if member is float:
            return _is_number(value)
        if member is str:
            return isinstance(value, str)
        if get_origin(member) in (tuple, list) or member is list:
            items = get_args(member)[:1]
            item_fits = {(float,): _is_number, (int,): _is_int}.get(items, lambda v: True)
            return isinstance(value, (list, tuple)) and all(item_fits(v) for v in value)
        if member is dict or get_origin(member) is dict or is_declaration(member):
            return isinstance(value, dict)
        return True

    def registered(self, value, path, meta):
        """A mapping naming a registered class or function in ``type``, checked against its options."""
        target = self.registered_class(value, path, meta)
        if target is not None:
            options = {k: v for k, v in value.items() if k != 'type'}
            self.declaration(target, options, path, passed=meta.passed, extra=meta.extra, owner=value['type'])
        return target

    def registered_class(self, value, path, meta):
        """The class or function ``value['type']`` names in ``meta``'s table, or None with the problem recorded."""
        if not isinstance(value, dict):
            self.problem(path, f'{found(value)}; expected a mapping with a type')
            return None
        name = value.get('type')
        target = meta.lookup(name) if isinstance(name, str) else None
        if target is not None:
            return target
        if meta.expected:
            self.problem(f'{path}:type', f'{found(name)}; expected {meta.expected}{closest(name, meta.names())}')
        elif not isinstance(name, str):
            self.problem(f'{path}:type', f'{found(name)}; expected the name of a registered {meta.what}')
        else:
            self.problem(f'{path}:type', f"{name!r} is not a registered {meta.what}; expected a name registered in "
                                         f"BasicSR's {meta.what} registry{closest(name, meta.names())}")
        return None
