"""The exception type for bad user input, and the warning categories for data graft leaves out."""

from PIL import Image


class GraftError(Exception):
    """A problem with the user's input or files, explained in one line.

    The CLI prints the message as ``graft: error: <message>`` and exits with code 2,
    with no traceback. Library users can catch it to tell their mistakes from bugs.
    """


class SkippedFileWarning(UserWarning):
    """A file graft skips while reading a dataset: an undecodable, truncated or empty image, a symlink loop.

    Every file graft skips is warned with this category, and the message names the file and the
    reason, so users can filter these warnings or turn them into errors, e.g.
    ``warnings.simplefilter("error", SkippedFileWarning)`` to refuse a dataset with any bad file.
    (Hidden files and files without an image extension are not taken for images at all; the
    dataset's notes count them.)
    """


class DuplicateImageWarning(UserWarning):
    """Byte-identical image files in two splits (train and val, say); both copies are kept.

    A validation or test image that is also in train makes the held-out scores optimistic.
    Filter this category to silence it, or turn it into an error to refuse such datasets.
    """


class LargeImageWarning(Image.DecompressionBombWarning):
    """An image over Pillow's decompression-bomb warning limit (``Image.MAX_IMAGE_PIXELS``, 89 Mpx),
    decoded anyway (it is under the hard limit, twice that). Pillow's own warning names no file;
    this one does, and filters set for Pillow's category apply to it."""
