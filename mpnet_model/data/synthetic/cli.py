"""`mpnet-synth`: write synthetic labelled indoor data: static scans (S3DIS layout) or virtual sensor frames.

    mpnet-synth --out data/synthetic --areas 5 --rooms-per-area 4                 # static scans (default)
    mpnet-synth --out data/sim_lidar --sensor os1-128 --areas 5 --sequences-per-area 2 --frames 6 --bags
    mpnet-synth --out data/sim_rgbd --sensor kinect,realsense --scenes room,floor --areas 5
    mpnet-synth --out data/sim_tabletop --sensor kinect,realsense --scenes tabletop --areas 5  # manipulation views
"""
from __future__ import annotations

import argparse

import numpy as np

from mpnet_model.data.synthetic.frames import SCENE_KINDS, SENSORS, generate_frames
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
    parser.add_argument('--preview', action='store_true',
                        help='also write a top-view preview.png per room (cameras: colour, class and instance images '
                             'of the first frames, preview.png per sequence)')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    sensors = parser.add_argument_group('virtual sensors (docs/simulated_sensors.md)')
    sensors.add_argument('--sensor', default='static',
                         help=f"'static' (S3DIS-like scans) or a comma list of {', '.join(SENSORS)}")
    sensors.add_argument('--scenes', default=','.join(SCENE_KINDS),
                         help='comma list of room, floor (rooms along a corridor), tabletop (manipulation views: '
                              'a camera 0.3-1.2 m above a table, pitched 30-70 deg down; cameras only); '
                              'sequences alternate them')
    sensors.add_argument('--sequences-per-area', type=int, default=2, help='drives per sensor and area')
    sensors.add_argument('--frames', type=int, default=8,
                         help='frames per drive, --spacing metres apart (tabletop: views, --spacing seconds apart)')
    sensors.add_argument('--spacing', type=float, default=1.0)
    sensors.add_argument('--columns', type=int, default=1024, choices=(512, 1024, 2048), help='lidar columns')
    sensors.add_argument('--bags', action='store_true', help='also write each drive as a rosbag2 (mcap) in bags/')
    args = parser.parse_args(argv)
    if args.sensor != 'static':
        return _sensor_main(parser, args)
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


def _sensor_main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from pathlib import Path

    from mpnet_model.data.synthetic.bags import write_sequence_bag

    wanted = tuple(s.strip().lower() for s in args.sensor.split(',') if s.strip())
    scenes = tuple(s.strip() for s in args.scenes.split(',') if s.strip())
    if args.sequences_per_area < 1 or args.frames < 1 or args.spacing <= 0:
        parser.error('--sequences-per-area and --frames must be >= 1, --spacing > 0')
    try:
        summary = generate_frames(args.out, {a: args.sequences_per_area for a in args.areas}, wanted, scenes,
                                  args.frames, args.spacing, args.columns, args.seed, progress=not args.quiet)
    except (ValueError, ImportError) as exc:
        parser.error(str(exc))
    if args.preview:
        from mpnet_model.data.synthetic.frames import CAMERA_SENSORS
        from mpnet_model.data.synthetic.preview import camera_preview

        for seq in summary['sequences']:
            if seq['sensor'] in CAMERA_SENSORS:
                seq_dir = Path(args.out) / f"Area_{seq['area']}" / seq['sequence']
                camera_preview(seq_dir, seq_dir / 'preview.png')
    if args.bags:
        for seq in summary['sequences']:
            bag = Path(args.out) / 'bags' / seq['sequence']
            if bag.exists():
                import shutil

                shutil.rmtree(bag)
            write_sequence_bag(Path(args.out) / f"Area_{seq['area']}" / seq['sequence'], bag)
    frames = sum(s['frames'] for s in summary['sequences'])
    print(f"wrote {len(summary['sequences'])} sequences ({frames} frames) to {args.out} in {summary['seconds']} s"
          + (f"; bags in {Path(args.out) / 'bags'}" if args.bags else ''))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
