"""The error boundary of the entry scripts: a mistake in the flags or input files ends the run with one
line on stderr and exit code 2; a bug still shows its traceback.

Code that checks user input raises UserError (a ValueError, so callers that catch ValueError keep
working) or InputNotFound (also a FileNotFoundError). Set ARPG_DEBUG=1 to see the traceback of a
UserError too.
"""
import argparse
import os
import sys
from typing import Callable, List, Optional

USER_ERROR_EXIT_CODE = 2  # argparse's code for a bad command line
HUB_PREFIX = "hf://"  # --gpt-ckpt / --vq-ckpt values that name a file on the Hugging Face Hub


class UserError(ValueError):
    """A value, flag or file the user gave is wrong; the message says which and what to do. Subclasses for
    conditions that are not a wrong input but need the user (a diverged run) set their own exit code."""
    exit_code = USER_ERROR_EXIT_CODE


class InputNotFound(UserError, FileNotFoundError):
    """A file or folder named on the command line does not exist."""


def run_main(main: Callable[[Optional[List[str]]], None], argv: Optional[List[str]] = None) -> None:
    """Call main(argv); turn a UserError into `error: <message>` on stderr and its exit code (2 unless the
    error's class says otherwise)."""
    try:
        main(argv)
    except UserError as error:
        if os.environ.get("ARPG_DEBUG", "") not in ("", "0"):
            raise
        print(f"error: {user_message(error)}", file=sys.stderr, flush=True)
        sys.exit(error.exit_code)


def user_message(error: UserError) -> str:
    """The message of the error; for one re-raised from a DataLoader worker (which wraps the worker's
    traceback into the message), the original message only."""
    message = str(error)
    marker = f"{type(error).__name__}: "
    if "Original Traceback" in message and marker in message:
        return message.rsplit(marker, 1)[1].strip()
    return message


def check_at_least(flag: str, value, minimum) -> None:
    """Refuse a count, size or scale below minimum (None means "not given" and passes)."""
    if value is not None and value < minimum:
        raise UserError(f"{flag} must be >= {minimum}, got {value}")


def check_at_most(flag: str, value, maximum, what: str) -> None:
    """Refuse a value above a limit the model sets, e.g. more decoding steps than tokens."""
    if value > maximum:
        raise UserError(f"{flag} {value} exceeds {what} ({maximum}); pass at most {maximum}")


def check_file(flag: str, path: Optional[str]) -> None:
    """Refuse a path that is not an existing file. None passes, and so does a Hugging Face Hub name
    (hf://owner/repo/file): the hub loader fetches it and says what is wrong with it."""
    if path is None or path.startswith(HUB_PREFIX):
        return
    if not os.path.isfile(path):
        what = "a folder, not a file" if os.path.isdir(path) else "not found"
        raise InputNotFound(f"{flag} {path}: {what}; check the path")


def check_image_output(flag: str, path: str) -> None:
    """Refuse an output name whose extension PIL cannot write, before any work is done."""
    from PIL import Image

    extension = os.path.splitext(path)[1].lower()
    if extension not in Image.registered_extensions():
        raise UserError(f"{flag} {path}: unknown image extension {extension or '(none)'!r}; use .png or .jpg")


def renamed_note(old: str, new: str) -> None:
    """One line on stderr for an old name of ours that still works: which name to use instead."""
    print(f"note: {old} is now {new} (the old name still works for now)", file=sys.stderr, flush=True)


class RenamedFlag(argparse.Action):
    """An old name of one of our flags: hidden from --help, it sets the new flag's destination and prints
    renamed_note. Declare it with dest=<the new flag's dest>, new_flag=<the new flag> and, for a switch,
    nargs=0 and const=<the value it stands for>."""

    def __init__(self, option_strings, dest, new_flag: str, **kwargs):
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new_flag = new_flag

    def __call__(self, parser, namespace, values, option_string=None):
        renamed_note(option_string, self.new_flag)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def renamed_values(flag: str, renames: dict, kind: Callable = str) -> Callable[[str], object]:
    """An argparse `type` for a flag whose values of ours were renamed: an old value becomes the new one,
    with renamed_note."""
    def convert(text: str):
        if text in renames:
            renamed_note(f"{flag} {text}", f"{flag} {renames[text]}")
            return kind(renames[text])
        return kind(text)

    return convert
