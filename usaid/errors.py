"""The errors U-SAID raises for bad input. The command-line tools print them as one message, without a traceback."""


class USAIDError(Exception):
    """Base class: a problem the user can fix from the message alone."""


class OptionError(USAIDError, ValueError):
    """An option file that cannot work, found before any work starts (nothing has been written yet)."""

    def __init__(self, option_file, problems):
        self.option_file = option_file
        self.problems = list(problems)
        lines = '\n'.join(f'  - {problem}' for problem in self.problems)
        count = f'{len(self.problems)} problem{"s" if len(self.problems) > 1 else ""}'
        super().__init__(f'{option_file}: {count} in the options (nothing was run or written):\n{lines}')


class NonFiniteLossError(USAIDError, RuntimeError):
    """A loss or its gradient became NaN or infinite; the step was not applied."""


class CheckpointError(USAIDError, RuntimeError):
    """A checkpoint or training state that cannot be used here, or one that could not be written."""


class OutputFolderError(USAIDError, RuntimeError):
    """An experiment or results folder that cannot be used: in use by a live run, a link, or not writable."""


class MissingExtraError(USAIDError, ImportError):
    """An optional feature whose packages (an extra of this package, see :mod:`usaid.extras`) are not installed."""
