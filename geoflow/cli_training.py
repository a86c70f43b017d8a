"""The training options every ``geoflow`` training command shares, and the ``fit`` keywords
they stand for, so each command reads them the same way."""

from __future__ import annotations


def add_training_arguments(parser, *, steps: int, batch_size: int) -> None:
    """``--steps``, ``--batch-size``, ``--lr``, ``--ema`` and ``--quiet`` with this command's defaults."""
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, metavar="DECAY",
                        help="keep, validate and save a moving average of the parameters with this decay (e.g. 0.999)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def fit_options(args) -> dict:
    """The keywords of :func:`geoflow.fit` that the shared options set."""
    return dict(steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, ema_decay=args.ema,
                progress=not args.quiet)
