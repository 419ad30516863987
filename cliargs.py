"""Argument types that check a flag's range when it is parsed, so a bad value stops at once.

`ArgumentParser` turns the `ArgumentTypeError` into one line,
`error: argument --epochs: must be an integer >= 1, got 0 (see train.py --help)`, and exit status 2,
before anything is loaded or written.
"""

import argparse
import math


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, but a bad flag gives one line (`error: ...`) instead of the usage block."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _describe(low, high, low_open=False):
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"<= {high:g}")
    return " and ".join(parts)


def int_range(low=None, high=None):
    """Returns an argparse type for integers in `[low, high]` (either bound may be `None`)."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer {_describe(low, high)}, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer {_describe(low, high)}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def float_range(low=None, high=None, low_open=False):
    """Returns an argparse type for finite floats in `[low, high]` (`(low, high]` with `low_open`)."""

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number {_describe(low, high, low_open)}, got {text!r}") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        if not math.isfinite(value) or too_low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be a finite number {_describe(low, high, low_open)}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


_UNSET = object()


def explicit_flags(parser, argv):
    """Returns the destinations of the flags that `argv` sets explicitly (not left at a default)."""
    # argparse fills in a default only where the namespace has no value yet.
    blank = argparse.Namespace(**{action.dest: _UNSET for action in parser._actions if action.dest != "help"})
    parsed, _ = parser.parse_known_args(argv, namespace=blank)
    return {dest for dest, value in vars(parsed).items() if value is not _UNSET}
