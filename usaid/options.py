"""Checks an option file before BasicSR runs it, so that a mistake gets one message naming the key instead of a
``KeyError`` deep in a traceback after the experiment folder was made.

:func:`check_options` walks a loaded option file and validates each section against its declaration
(:mod:`usaid.declarations`): the top level and BasicSR's own sections (:mod:`usaid.basicsr_sections`), the model's
``train``, ``val`` and ``path`` (:func:`~usaid.basicsr_sections.sections_of`), and every mapping with a ``type``
against the declaration of the class or function that BasicSR's registry (or ``torch.optim``) holds under that
name, or its signature where it has none. Then the rules between sections (:mod:`usaid.option_rules`). Every
problem found is collected into one :class:`~usaid.errors.OptionError`. :func:`install` makes BasicSR's
``train_pipeline`` and ``test_pipeline`` call it first, whichever script started them.
"""
import sys
from os import path as osp

from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, MODEL_REGISTRY

from usaid import option_rules, yaml_io
from usaid.basicsr_sections import LoaderOptions, OptionFile, sections_of
from usaid.declarations import NUMBER_LIKE, Check, Registered, closest, found
from usaid.errors import OptionError, USAIDError

# keys whose values are strings even when they read as numbers
_STRING_KEYS = ('name', 'suffix', 'filename_tmpl', 'project', 'resume_id', 'entity', 'type')
_MODELS = Registered(MODEL_REGISTRY, 'model')
_DATASETS = Registered(DATASET_REGISTRY, 'dataset')


def load_option_file(option_file):
    """The option file as BasicSR's ``parse_options`` loads it (ordered YAML, read by :mod:`usaid.yaml_io`'s safe
    loader); an ``OptionError`` if it cannot be."""
    try:
        with open(option_file) as f:
            opt = yaml_io.load(f)
    except OSError as error:
        raise OptionError(option_file, [f'cannot be read ({error.strerror or error})']) from None
    if not isinstance(opt, dict):
        raise OptionError(option_file, [f'found {type(opt).__name__} at the top level; expected a mapping of '
                                        'options (name, model_type, datasets, network_g, ...)'])
    return opt


def check_option_file(option_file, is_train):
    """Load and check an option file; returns the options or raises one :class:`~usaid.errors.OptionError`."""
    opt = load_option_file(option_file)
    check_options(opt, option_file, is_train)
    return opt


def check_options(opt, option_file, is_train):
    """Raise one :class:`~usaid.errors.OptionError` listing every problem of ``opt`` (loaded from ``option_file``)
    for a training (``is_train``) or test run; return None if there is none."""
    check = Check(number_strings=False)
    _walk(opt, is_train, check)
    if check.problems:
        raise OptionError(option_file, check.problems)


def _as_yaml11_float(text):
    """``text`` spelled so that YAML 1.1 reads a float: 2e-4 -> 2.0e-4, 1e3 -> 1.0e+3."""
    mantissa, _, exponent = text.replace('E', 'e').partition('e')
    if '.' not in mantissa:
        mantissa += '.0'
    if exponent and exponent[0] not in '+-':
        exponent = '+' + exponent
    return f'{mantissa}e{exponent}' if exponent else mantissa


def _strings_that_are_numbers(value, path, check):
    """YAML 1.1 reads ``2e-4`` and ``1.0e3`` as strings; BasicSR then fails far from the option file."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key not in _STRING_KEYS and key != 'path' and not str(key).startswith(('dataroot', 'meta_info')):
                _strings_that_are_numbers(item, f'{path}:{key}' if path else str(key), check)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _strings_that_are_numbers(item, f'{path}[{index}]', check)
    elif isinstance(value, str) and NUMBER_LIKE.match(value.strip()) and any(c.isdigit() for c in value):
        check.problem(path, f'found the string {value!r}; expected a number (YAML 1.1 reads an exponent as a number '
                            'only after a decimal point and with a sign): write '
                            f'{_as_yaml11_float(value.strip())} or !!float {value.strip()}')


def _walk(opt, is_train, check):
    """Every section against its declaration, then the rules between sections."""
    _strings_that_are_numbers(opt, '', check)
    model_type = opt.get('model_type')
    model_class = _MODELS.lookup(model_type) if isinstance(model_type, str) else None
    if isinstance(model_type, str) and model_class is None:
        check.problem('model_type', f"{model_type!r} is not a registered model; expected a name registered in "
                                    f"BasicSR's model registry{closest(model_type, _MODELS.names())}")
    elif 'model_type' in opt and not isinstance(model_type, str):
        check.problem('model_type', f'{found(model_type)}; expected a registered model, e.g. USAIDModel')
    sections = sections_of(model_class)
    check.declaration(OptionFile, opt, '', extra=sections.top)
    facts = option_rules.OptionFileFacts()
    for key in ('path', 'train', 'val'):
        if isinstance(opt.get(key), dict):
            setattr(facts, key, check.declaration(getattr(sections, key), opt[key], key))
    option_rules.sections_present(opt, is_train, check)

    network_opt = opt.get('network_g')
    if isinstance(network_opt, dict) and not any(p.startswith('network_g') for p in check.problems):
        facts.network_opt, facts.arch = network_opt, Registered(ARCH_REGISTRY, 'architecture').lookup(
            network_opt.get('type'))
    if isinstance(opt.get('datasets'), dict):
        for phase_key, dataset_opt in opt['datasets'].items():
            _dataset(opt, str(phase_key), dataset_opt, is_train, facts, check)
    option_rules.output_names(opt, check)
    option_rules.gpus_present(opt, check)
    option_rules.metrics_fit_images(opt, facts, check)
    if not any(p.startswith('network_g') for p in check.problems):
        option_rules.network_runs(opt, facts, check)
    option_rules.accumulate_divides_batch(opt, check)
    option_rules.usa_batch_statistics(opt, check)


def _dataset(opt, phase_key, dataset_opt, is_train, facts, check):
    """One dataset: BasicSR's loader keys and the dataset class's own options (its declaration, if it has one), then
    its data."""
    key = f'datasets:{phase_key}'
    phase = phase_key.split('_')[0]
    if is_train and phase not in ('train', 'val'):
        check.problem(key, "is not a dataset BasicSR's training pipeline knows; expected train, val or val_<anything>")
        return
    if not isinstance(dataset_opt, dict):
        check.problem(key, f'{found(dataset_opt)}; expected a mapping of dataset options')
        return
    dataset_class = check.registered_class(dataset_opt, key, _DATASETS)
    values = {k: v for k, v in dataset_opt.items() if k != 'type'}
    if dataset_class is None or not hasattr(dataset_class, 'Options'):  # BasicSR's datasets read what they like
        check.declaration(LoaderOptions, dict(values, phase=phase), key, is_open=True)
        for data_key in ('dataroot_gt', 'dataroot_lq', 'meta_info_file'):
            value = dataset_opt.get(data_key)
            if isinstance(value, str) and not osp.exists(osp.expanduser(value)):
                check.problem(f'{key}:{data_key}', f'{value} does not exist; expected an existing path')
        return
    options = check.declaration(dataset_class, dict(values, phase=phase), key, extra=LoaderOptions)
    if options is not None and not any(p.startswith(f'{key}:') for p in check.problems):
        loader = LoaderOptions(**{k: v for k, v in values.items() if k in LoaderOptions.__dataclass_fields__})
        facts.in_ch = options.in_ch
        option_rules.channels(opt, options.in_ch, key, facts, check)
        option_rules.dataset_images(opt, loader, options, key, facts, check)


def install():
    """Make BasicSR's ``train_pipeline`` and ``test_pipeline`` check the option file before they parse it, whichever
    script runs them: ``usaid-train``, torchrun, and BasicSR's own ``train.py``/``test.py`` run as scripts (from a
    checkout or from the installed package), whose ``from basicsr.utils.options import parse_options`` runs after
    ``import basicsr`` has imported U-SAID (``usaid_autoload``), so the name is replaced at its source.

    A script run as ``__main__`` defines its own ``load_resume_state``, which no module-level fix reaches: the checked
    parser hands the calling script's namespace to :func:`usaid.compat.adopt_script`. An :class:`~usaid.errors.
    USAIDError` that such a script does not catch is printed as one message (exit status 1), as ``usaid-train`` does.
    """
    import basicsr.test
    import basicsr.train
    import basicsr.utils.options

    from usaid import compat

    parse = basicsr.utils.options.parse_options
    if getattr(parse, 'usaid_checked', False):
        return

    def parse_options_checked(root_path, is_train=True):
        compat.adopt_script(sys._getframe(1).f_globals)  # the namespace of the pipeline that called us
        check_option_file(_option_file_argument(), is_train)
        return parse(root_path, is_train)  # usaid.compat.force_yml_checked checks --force_yml's result

    parse_options_checked.__doc__ = f'{parse.__doc__ or ""}\n(Checked first by usaid.options.check_options.)'
    parse_options_checked.usaid_checked = True
    for module in (basicsr.utils.options, basicsr.train, basicsr.test):
        module.parse_options = parse_options_checked
    sys.excepthook = _message_for_usaid_errors(sys.excepthook)


def _message_for_usaid_errors(excepthook):
    """``excepthook`` that prints a :class:`~usaid.errors.USAIDError` as ``<program>: <message>`` (a mistake in the
    input, not a bug: no traceback) and leaves every other exception to ``excepthook``."""
    def print_message(kind, error, traceback):
        if isinstance(error, USAIDError):
            print(f'{osp.basename(sys.argv[0]) or "python"}: {error}', file=sys.stderr)
        else:
            excepthook(kind, error, traceback)

    return print_message


def _option_file_argument():
    """The ``-opt`` argument of the command line, as BasicSR's parser will read it."""
    import argparse
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('-opt', type=str, required=True)
    args, _ = parser.parse_known_args(sys.argv[1:])
    return args.opt
