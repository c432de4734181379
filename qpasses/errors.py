"""One error hierarchy. Every error a user can cause is a `QPassError`: the CLI prints its
message as one line (no traceback) and exits with status 2. Messages say what is wrong and
what to do about it."""


class QPassError(Exception):
    """Base of every error qpasses raises on purpose."""


class InputError(QPassError):
    """A model, tokenizer, text or ONNX file that cannot be used as given."""


class RecipeError(QPassError):
    """A recipe that names an unknown pass or setting, or holds a bad value."""


class PreconditionError(QPassError):
    """A pass was asked to run on a graph that does not meet what it requires."""


class PostconditionError(QPassError):
    """A pass ran but the graph does not meet what the pass promised."""


class NoMatchError(PostconditionError):
    """A pass that should have rewritten sites matched none."""


class LoweringError(QPassError):
    """A site cannot be lowered to the chosen target."""
