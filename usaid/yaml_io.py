"""One safe way to read option files and ``--force_yml`` values, for every entry point.

BasicSR 1.4.2 reads option files with PyYAML's full loader, which builds whatever Python object a tag names:
``name: !!python/object/apply:os.system ["..."]`` runs a command. :class:`OptionLoader` reads YAML's safe subset
only (mappings, lists, strings, numbers, booleans, null, dates) into BasicSR's ordered mappings, and refuses a key
given twice in one mapping (YAML would keep the last one, silently). Every problem is one
:class:`~usaid.errors.OptionError` naming the key and the line.
"""
from collections import OrderedDict

import yaml

from usaid.errors import OptionError

_MERGE_TAG = 'tag:yaml.org,2002:merge'


def _key_path(parts):
    """``datasets:train:sigma[0]`` from the keys and list indices leading to a value; ``(top level)`` for none."""
    return ''.join(part if part.startswith('[') else f':{part}' for part in parts).lstrip(':') or '(top level)'


class OptionLoader(yaml.SafeLoader):
    """YAML's safe loader with BasicSR's ordered mappings; a key given twice or a tag that is not plain YAML (which
    the full loader would turn into a Python object, or a call) is an ``OptionError`` naming the key and line.

    Args:
        stream (str | file): YAML text, or an open file (its name is used in messages).
    """

    def __init__(self, stream):
        super().__init__(stream)
        self.key_path = []  # the keys (and list indices) leading to the node being built, for messages

    def problem(self, node, text):
        """An ``OptionError`` for the value being built: ``key:path: text``."""
        return OptionError(node.start_mark.name, [f'{_key_path(self.key_path)}: {text}'])

    def construct_object(self, node, deep=False):
        """The value of ``node``; a tag whose value it cannot make (``!!int abc``, ``!!str [1]``: PyYAML raises
        ValueError, KeyError, ... for them) is an ``OptionError`` naming the key and line."""
        try:
            return super().construct_object(node, deep=deep)
        except OptionError:
            raise
        except Exception as error:  # noqa: BLE001  (whatever a constructor raises for a value it cannot make)
            reason = getattr(error, 'problem', None) or str(error).strip() or type(error).__name__
            tag, why = node.tag.replace('tag:yaml.org,2002:', '!!', 1), reason.splitlines()[0]
            raise self.problem(node, f'the tag {tag} on line {node.start_mark.line + 1} does not fit its value '
                                     f'({why}); expected a value the tag allows, or no tag') from None

    def construct_ordered_mapping(self, node):
        """An ``OrderedDict``, as BasicSR's loader makes, built depth first so that messages name the key."""
        first_lines = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:  # '<<: *anchor' merges; the mapping's own keys then override those
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):  # BasicSR joins keys as text (dict2str) and indexes with strings
                raise self.problem(key_node, f'the key {key!r} on line {line} is {type(key).__name__}; expected a '
                                             'string (quote it)')
            first = first_lines.get(key)
            if first is not None:
                self.key_path.append(str(key))
                raise self.problem(key_node, f'given twice, on lines {first} and {line}; expected each key once '
                                             '(YAML would keep the last one without a word)')
            first_lines[key] = line
        self.flatten_mapping(node)
        mapping = OrderedDict()
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            self.key_path.append(str(key))
            mapping[key] = self.construct_object(value_node, deep=True)
            self.key_path.pop()
        return mapping

    def construct_list(self, node):
        """A list, built depth first so that messages name the item."""
        items = []
        for index, item_node in enumerate(node.value):
            self.key_path.append(f'[{index}]')
            items.append(self.construct_object(item_node, deep=True))
            self.key_path.pop()
        return items

    def construct_yaml_int(self, node):
        """An integer, unless YAML 1.1 would read it in base 60 (``1:30`` is 90) or base 8 (``010`` is 8): a number
        that means something else than it reads is refused, naming the key and line."""
        digits = str(node.value).replace('_', '').lstrip('+-')
        if ':' in digits or (len(digits) > 1 and digits[0] == '0' and digits[1].isdigit()):
            value = super().construct_yaml_int(node)
            base = 'base 60' if ':' in digits else 'octal'
            raise self.problem(node, f'{node.value} on line {node.start_mark.line + 1} is read by YAML 1.1 as the '
                                     f'{base} number {value}; expected a decimal number without leading zeros (or '
                                     'quote it for a string)')
        return super().construct_yaml_int(node)

    def construct_unsafe(self, node):
        """Any tag outside YAML's safe subset, such as ``!!python/object/apply:``: refused, nothing is built."""
        tag = node.tag.replace('tag:yaml.org,2002:', '!!', 1)
        raise self.problem(node, f'the tag {tag} on line {node.start_mark.line + 1} is not allowed; expected plain '
                                 'YAML values (option files are read with a safe loader: no tag may make a Python '
                                 'object or run code)')


OptionLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, OptionLoader.construct_ordered_mapping)
OptionLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, OptionLoader.construct_list)
OptionLoader.add_constructor('tag:yaml.org,2002:int', OptionLoader.construct_yaml_int)
OptionLoader.add_constructor(None, OptionLoader.construct_unsafe)


class OptionDumper(yaml.SafeDumper):
    """YAML's safe dumper writing BasicSR's ordered mappings as plain mappings, in their order."""


OptionDumper.add_representer(OrderedDict, lambda dumper, data: dumper.represent_dict(data.items()))


def ordered_yaml():
    """``(Loader, Dumper)`` as BasicSR's ``ordered_yaml`` returns them: :class:`OptionLoader` and
    :class:`OptionDumper`."""
    return OptionLoader, OptionDumper


def load(stream):
    """The options in ``stream`` (YAML text or an open file); an ``OptionError`` naming the key and line for a key
    given twice or a tag that is not plain YAML, or saying where the text is not YAML.

    Args:
        stream (str | file): YAML text, or an open file.
    """
    name = getattr(stream, 'name', '<text>')
    try:
        opt = yaml.load(stream, Loader=OptionLoader)
    except yaml.YAMLError as error:
        raise OptionError(name, [f'is not valid YAML: {error}']) from None
    except UnicodeDecodeError as error:
        raise OptionError(name, [f'is not UTF-8 text ({error.reason} at byte {error.start}); expected a YAML text '
                                 'file in UTF-8']) from None
    except RecursionError:
        raise OptionError(name, ['is nested deeper than Python can read; expected an option file']) from None
    _check_size(opt, name)
    return opt


# More values than any option file holds: aliases can make a few lines stand for billions of values ("billion laughs"),
# which every walk over the options would then visit.
MAX_VALUES = 100_000
MAX_DEPTH = 100  # BasicSR's option files nest 5 levels; the checks walk them recursively


def _check_size(opt, name):
    """An ``OptionError`` if ``opt``, with its aliases expanded, holds more than :data:`MAX_VALUES` values; counted
    without recursion, and stopping at the limit."""
    pending, count = [(opt, 0)], 0
    while pending:
        value, depth = pending.pop()
        count += 1
        if count > MAX_VALUES:
            raise OptionError(name, [f'holds more than {MAX_VALUES:,} values once its aliases (*name) are expanded; '
                                     'expected an option file (aliases that repeat large lists or mappings are '
                                     'refused)'])
        if depth > MAX_DEPTH:
            raise OptionError(name, [f'is nested more than {MAX_DEPTH} levels deep; expected an option file'])
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        pending.extend((child, depth + 1) for child in children)


def parse_value(text):
    """A ``--force_yml`` value as YAML reads it (a number, string, boolean, null or list), never evaluated; ``none``
    in any case is null, as in BasicSR. Raises ``OptionError`` as :func:`load` does.

    Args:
        text (str): The value, right of ``=``.
    """
    return None if text.lower() == 'none' else load(text)


def _override(opt, entry):
    """``(mapping, key, value)`` that the ``--force_yml`` ``entry`` sets in ``opt``; a ``ValueError`` saying why it
    cannot be applied."""
    if entry.count('=') != 1:
        raise ValueError(f"{'no' if '=' not in entry else 'more than one'} '='; expected KEY=VALUE with one =, e.g. "
                         'train:ema_decay=0.999')
    keys, text = (part.strip() for part in entry.split('='))
    parts = keys.split(':')
    if not all(parts):
        raise ValueError('an empty key; expected KEY=VALUE with the keys of the option file separated by single '
                         'colons, e.g. train:ema_decay=0.999')
    if any(c in keys for c in '"\\\n\r'):
        raise ValueError('a key holds a quote, a backslash or a line break; expected the keys of the option file')
    parent = opt
    for depth, key in enumerate(parts[:-1]):
        if key not in parent:
            within = ':'.join(parts[:depth]) or 'the top level of the option file'
            raise ValueError(f'{within} has no key {key!r}; expected a key the option file has (--force_yml changes '
                             'a value, it does not add sections)')
        parent = parent[key]
        if not isinstance(parent, dict):
            raise ValueError(f"{':'.join(parts[:depth + 1])} is not a mapping; expected the key of a mapping")
    if not text:
        raise ValueError('no value; expected KEY=VALUE (write ~ for null)')
    try:
        value = parse_value(text)
    except OptionError as error:
        raise ValueError(f'in the value: {error.problems[0].removeprefix("(top level): ")}') from None
    return parent, parts[-1], value


def apply_overrides(opt, entries, option_file):
    """Apply ``--force_yml`` entries to ``opt`` in order, as BasicSR's ``parse_options`` will; one ``OptionError``
    naming every entry that cannot be applied.

    BasicSR splits an entry at its one ``=``, walks the keys left of it (separated by ``:``) through existing mappings
    (the last key may be new) and applies it with ``exec('opt["KEY"]...=value')``; so a key must be non-empty and
    hold no ``"`` or ``\\`` (which would end the string and let the key run code), and the value must be plain YAML.

    Args:
        opt (dict): The options loaded from ``option_file``; changed in place.
        entries (list[str]): The ``--force_yml`` arguments.
        option_file (str): The option file, for the message.
    """
    problems = []
    for entry in entries:
        try:
            parent, key, value = _override(opt, entry)
        except ValueError as error:
            problems.append(f'--force_yml {entry!r}: {error}')
            continue
        parent[key] = value
    if problems:
        raise OptionError(option_file, problems)
