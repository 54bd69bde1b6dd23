"""`streampose evaluate ...`: evaluations of the plugins on labelled videos.

`pose_cache` runs the detector and keypoint stages once per clip and replays the stages after
them (tracker, smoother, plugins) from what it stored; `falls` scores the fall plugin, `reps`
the repetition counter.
"""


def add_evaluate_parser(commands) -> None:
    """`streampose evaluate <what>`: each evaluation module adds its own subcommand."""
    from streampose.evaluate import falls, reps

    p = commands.add_parser("evaluate", help="score plugins on the labelled videos (evaluate falls, evaluate reps)")
    evaluations = p.add_subparsers(dest="evaluation", required=True)
    falls.add_parser(evaluations)
    reps.add_parser(evaluations)
