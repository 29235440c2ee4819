"""`mpnet-synth`: write a synthetic S3DIS-layout dataset of static scans."""
from __future__ import annotations

import argparse

import numpy as np

from mpnet_model.data.synthetic.io import generate_dataset
from mpnet_model.data.synthetic.sampling import DEFAULT_DENSITY, DEFAULT_NOISE, DEFAULT_RARE_PROB


def _parse_areas(text: str) -> list[int]:
    """'5' -> areas 1..5; '1,3,5' -> those areas."""
    try:
        if ',' in text:
            areas = [int(a) for a in text.split(',') if a.strip()]
        else:
            areas = list(range(1, int(text) + 1))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f'--areas: expected a count (5) or a list (1,3,5), got {text!r}') from exc
    if not areas or min(areas) < 1:
        raise argparse.ArgumentTypeError(f'--areas: area numbers must be >= 1, got {text!r}')
    return areas


def main(argv: list[str] | None = None) -> int:
    """Console entry `mpnet-synth`: write a synthetic S3DIS-layout dataset."""
    parser = argparse.ArgumentParser(prog='mpnet-synth', description=__doc__.split('\n')[0])
    parser.add_argument('--out', required=True, help='dataset root; Area_<a>/<room>/ folders are created in it')
    parser.add_argument('--areas', type=_parse_areas, default=_parse_areas('5'),
                        help='number of areas (1..N) or a comma list of area numbers (default 5)')
    parser.add_argument('--rooms-per-area', type=int, default=4)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--density', type=float, default=DEFAULT_DENSITY, help='points per m^2 before occlusion')
    parser.add_argument('--noise', type=float, default=DEFAULT_NOISE, help='position noise std in metres')
    parser.add_argument('--rare-prob', type=float, default=DEFAULT_RARE_PROB,
                        help='probability that a room gets 1-2 rare arrangements')
    parser.add_argument('--preview', action='store_true', help='also write a top-view preview.png per room')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)
    if args.rooms_per_area < 1:
        parser.error(f'--rooms-per-area must be >= 1, got {args.rooms_per_area}')
    try:
        summary = generate_dataset(args.out, {a: args.rooms_per_area for a in args.areas}, seed=args.seed,
                                   density=args.density, noise=args.noise, rare_prob=args.rare_prob,
                                   progress=not args.quiet, preview=args.preview)
    except ValueError as exc:
        parser.error(str(exc))
    points = [r['points'] for r in summary['rooms']]
    print(f"wrote {len(points)} rooms to {args.out}: {int(np.mean(points))} points/room on average, "
          f"{summary['seconds_per_room']} s/room")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
