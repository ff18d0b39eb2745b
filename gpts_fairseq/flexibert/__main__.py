"""Command line of the heterogeneous architecture search.

    python -m gpts_fairseq.flexibert search --data DATA_BIN --out runs/boshnas --method boshnas --budget 30
    python -m gpts_fairseq.flexibert library --space my_space.yaml --near "sdp:h128:a2:f512x1,dft:h128:a2:f512x1"
    python -m gpts_fairseq.flexibert plot runs/boshnas runs/gp-bo runs/random --png searches.png

``search`` trains each query with fairseq-train (task gpts_mlm) in ``OUT/runs/qNNN``, keeps its
state in ``OUT/search.json`` (run the same command again to resume after a kill), prints one
line per query and redraws ``OUT/search.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from .space import DEFAULT_SPACE, DesignSpace, format_layers


def _search_parser(sub) -> None:
    from .runner import TrainSettings
    from .search import METHODS, SearchConfig

    parser = sub.add_parser("search", help="run (or resume) a search")
    parser.add_argument("--data", type=Path, required=True, help="fairseq-preprocess'ed corpus (dict.txt, train, valid)")
    parser.add_argument("--out", type=Path, required=True, help="search directory (state, runs, plot)")
    parser.add_argument("--method", choices=METHODS, default="boshnas")
    parser.add_argument("--space", type=Path, default=DEFAULT_SPACE, help="design space YAML")
    for item in fields(SearchConfig):
        if item.name in ("method", "space", "surrogate", "homogeneous_only", "transfer"):
            continue
        parser.add_argument(f"--{item.name.replace('_', '-')}", type=type(item.default), default=item.default)
    parser.add_argument("--homogeneous-only", action="store_true", help="search the homogeneous models only")
    parser.add_argument("--no-transfer", action="store_true", help="train every query from scratch")
    for item in fields(TrainSettings):
        if item.name in ("valid_subsets", "extra_args"):
            continue
        parser.add_argument(f"--{item.name.replace('_', '-')}", type=type(item.default), default=item.default)
    parser.add_argument("--valid-subsets", default="valid", help="comma-separated; the search reads the first")


def search_command(args) -> int:
    from .plots import plot_searches
    from .runner import TrainSettings
    from .search import Search, SearchConfig, fairseq_trainer

    space = DesignSpace.load(args.space)
    config = SearchConfig(**{item.name: getattr(args, item.name) for item in fields(SearchConfig)
                             if item.name not in ("space", "surrogate", "homogeneous_only", "transfer")},
                          space=space.to_dict(), homogeneous_only=args.homogeneous_only, transfer=not args.no_transfer)
    settings = TrainSettings(**{item.name: getattr(args, item.name) for item in fields(TrainSettings)
                                if item.name not in ("valid_subsets", "extra_args")},
                             valid_subsets=tuple(args.valid_subsets.split(",")))
    if not (args.data / "dict.txt").is_file():
        raise ValueError(f"--data: no dict.txt in {args.data} (run fairseq-preprocess --only-source first)")
    search = Search(args.out, config, fairseq_trainer(args.out, args.data, settings, config.seed))
    settings_path = args.out / "train_settings.json"
    if settings_path.exists() and json.loads(settings_path.read_text()) != settings.to_dict():
        raise ValueError(f"{settings_path}: this search was started with other training options")
    args.out.mkdir(parents=True, exist_ok=True)
    settings_path.write_text(json.dumps(settings.to_dict(), indent=1) + "\n")
    log = search.log
    search.log = lambda line: (log(line), plot_searches({config.method: search.queries}, args.out / "search.png"))
    queries = search.run()
    best = search.best()
    print(json.dumps({"trained": len(queries), "best": {k: best[k] for k in ("layers", "loss", "params")}}))
    return 0


def library_command(args) -> int:
    import numpy as np

    from .embedding import classical_mds, distance_matrix, edit_distance
    from .model import resolve_layers

    space = DesignSpace.load(args.space)
    library = space.library(args.size, args.seed)
    print(f"design space {args.space}: {space.size():,} models; library: {len(library):,}")
    if args.near:
        target = resolve_layers(args.near)
        distances = np.array([edit_distance(target, model) for model in library])
        for index in np.argsort(distances, kind="stable")[:args.k]:
            print(f"{distances[index]:6.3f}  {format_layers(library[index])}")
    if args.embed:
        coordinates = classical_mds(distance_matrix(library))
        rows = [{"layers": format_layers(m), "embedding": [round(float(v), 6) for v in c]}
                for m, c in zip(library, coordinates)]
        args.embed.write_text(json.dumps(rows) + "\n")
        print(f"embedding ({coordinates.shape[1]} dims) written to {args.embed}")
    return 0


def plot_command(args) -> int:
    from .plots import plot_searches

    searches = {}
    for directory in args.dirs:
        state = json.loads((directory / "search.json").read_text())
        searches[f"{state['config']['method']} ({directory.name})"] = state["queries"]
    plot_searches(searches, args.png)
    print(args.png)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpts_fairseq.flexibert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _search_parser(sub)
    library = sub.add_parser("library", help="size of a design space, nearest models, the embedding")
    library.add_argument("--space", type=Path, default=DEFAULT_SPACE)
    library.add_argument("--size", type=int, default=1000)
    library.add_argument("--seed", type=int, default=1)
    library.add_argument("--near", help="layer string: print its nearest library models")
    library.add_argument("-k", type=int, default=5)
    library.add_argument("--embed", type=Path, help="write every library model's 16-d embedding (JSON)")
    plot = sub.add_parser("plot", help="best-so-far and loss-size front of several searches")
    plot.add_argument("dirs", type=Path, nargs="+")
    plot.add_argument("--png", type=Path, required=True)
    args = parser.parse_args(argv)
    commands = {"search": search_command, "library": library_command, "plot": plot_command}
    try:
        return commands[args.command](args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
