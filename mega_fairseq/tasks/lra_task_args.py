"""Command-line arguments the official ``lra-text``, ``lra-image`` and ``speech_commands`` tasks share."""

SHORTEN_METHODS = ("none", "truncate", "random_crop")


def add_common_lra_args(parser):
    """The official shared task options (after the positional ``data``)."""
    parser.add_argument("--num-classes", type=int, default=-1,
                        help="number of classes; when given (> 0) it must match the data")
    parser.add_argument("--regression-target", action="store_true", default=False,
                        help="accepted as in the official task; regression is not supported (refused)")
    parser.add_argument("--no-shuffle", action="store_true", default=False,
                        help="keep the training rows in file order")
    parser.add_argument("--shorten-method", default="none", choices=list(SHORTEN_METHODS),
                        help="cut rows longer than max_positions by truncation or a random crop (rows are "
                             "always truncated to max_positions in the end, as officially)")
    parser.add_argument("--shorten-data-split-list", default="",
                        help="comma-separated splits --shorten-method applies to (empty: all)")


def check_common_lra_args(args, task: str) -> None:
    """Refuse settings of the shared options that the task cannot honour."""
    if getattr(args, "regression_target", False):
        raise ValueError("--regression-target is not supported by --task {}: it classifies (the official "
                         "task accepted the flag but still built class targets)".format(task))
    method = getattr(args, "shorten_method", "none")
    if method not in SHORTEN_METHODS:
        raise ValueError("--shorten-method {!r} is not supported; allowed: {}".format(method, ", ".join(SHORTEN_METHODS)))
