"""The points of a Hydra sweep, one per Slurm array task: ``python -m qwenpt.sweep count|point I|list OVERRIDES``.

An experiment config (conf/experiment/*.yaml) declares its grid in ``hydra.sweeper.params``;
``python train.py +experiment=X`` runs every point in one process (Hydra multirun). On a cluster,
slurm/sweep.sh runs one point per array task: this module expands the grid exactly as Hydra's
basic sweeper does (same order), so array index i is multirun job i.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from qwenpt.config import register

CONF = Path(__file__).resolve().parents[1] / "conf"


def sweep_points(overrides: list[str]) -> list[list[str]]:
    """Every point of the sweep ``overrides`` select: the grid's overrides for each job, in Hydra's order.
    Sweeps given on the command line (``key=a,b``) combine with the config's, as in multirun."""
    register()
    parser = OverridesParser.create()
    fixed = [o for o in parser.parse_overrides(overrides) if not o.is_sweep_override()]
    swept = [o for o in parser.parse_overrides(overrides) if o.is_sweep_override()]
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=[o.input_line for o in fixed], return_hydra_config=True)
    params = {str(k): str(v) for k, v in (cfg.hydra.sweeper.get("params") or {}).items()}
    for o in swept:  # the command line wins over the config, as in Hydra
        params[o.key_or_group] = o.input_line.split("=", 1)[1]
    grid = parser.parse_overrides([f"{k}={v}" for k, v in params.items()])
    batches = BasicSweeper.split_arguments(grid, None)
    return [point for batch in batches for point in batch] or [[]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m qwenpt.sweep", description=__doc__)
    ap.add_argument("command", choices=["count", "point", "list"])
    ap.add_argument("rest", nargs=argparse.REMAINDER, help="for point: the index, then the overrides")
    args = ap.parse_args(argv)
    rest = list(args.rest)
    index = None
    if args.command == "point":
        if not rest or not rest[0].isdigit():
            ap.error("point needs an index: python -m qwenpt.sweep point I +experiment=...")
        index = int(rest.pop(0))
    points = sweep_points(rest)
    if args.command == "count":
        print(len(points))
    elif args.command == "list":
        for i, point in enumerate(points):
            print(i, " ".join(point))
    else:
        if index >= len(points):
            print(f"sweep index {index} is out of range: the sweep has {len(points)} points (0..{len(points) - 1})",
                  file=sys.stderr)
            return 2
        print(" ".join(points[index]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
