"""Pictures of a model on the real shared sensor frames, for the README's before / after.

Ouster OS-1-128 bag and Kinect tabletop bag through `mpnet-bag`'s path (the node's ScenePipeline, no tf), the PCL
office scan as the demo reads it (optical frame turned z-up). "Before" is today's shipped model with today's
pipeline (`--gravity-align off`); an "after" run names the new model and `--gravity-align auto`.

    python benchmarks/real_frames.py --out docs/images/before --gravity-align off
    python benchmarks/real_frames.py --model runs/mixed/best.pt --out docs/images/after --gravity-align auto
"""
from __future__ import annotations

import argparse
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np


def main() -> None:
    from mpnet_model.infer.scene import SceneSegmenter
    from mpnet_model.io.pointclouds import load_pcd, optical_to_z_up
    from mpnet_model.viz.render import render_segmentation
    from mpnet_ros.bag_tool import segment_bag
    from mpnet_ros.params import validate_params

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', default='', help='checkpoint (.pt); empty = the shipped model')
    parser.add_argument('--shared', type=Path, default=Path('../shared/data'))
    parser.add_argument('--out', type=Path, required=True)
    parser.add_argument('--gravity-align', choices=('off', 'auto'), default='off')
    parser.add_argument('--max-range', type=float, default=8.0, help='Ouster range crop [m] (as the demo; 0 = none)')
    parser.add_argument('--view-range', type=float, default=20.0,
                        help='draw the Ouster points within this range [m] (the whole cloud is segmented)')
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    backend = 'torch' if args.model.endswith('.pt') else 'onnxruntime'
    segmenter = SceneSegmenter.from_config(backend, args.model)
    names = segmenter.class_names
    model = args.model or 'shipped model'
    summary = {}

    def shares(labels) -> dict:
        counts = Counter(names[i] for i in labels[labels >= 0])
        return {k: round(v / max(len(labels), 1), 3) for k, v in counts.most_common(5)}

    for key, bag, topic, extra in (
            ('ouster', 'ouster_os1_128', '/ouster/points', {'max_range': args.max_range}),
            ('kinect_tabletop', 'kinect_tabletop_sequence', '/camera/depth_registered/points', {})):
        results = []
        params = validate_params({'gravity_align': args.gravity_align, **extra}, check_files=False)
        out_bag = args.out / f'{key}_labelled'
        shutil.rmtree(out_bag, ignore_errors=True)
        segment_bag(args.shared / bag, out_bag, params, topic=topic, segmenter=segmenter, on_result=results.append,
                    progress=False)
        shutil.rmtree(out_bag, ignore_errors=True)
        last = results[-1]
        xyz = last.xyz if key == 'ouster' else optical_to_z_up(last.xyz)     # draw the camera z-up
        shown = np.linalg.norm(xyz, axis=1) < args.view_range if key == 'ouster' else slice(None)
        crop = f'max_range {args.max_range:g} m' if args.max_range else 'uncropped'
        render_segmentation(xyz[shown], last.labels[shown], last.instances[shown], names, args.out / f'{key}.png',
                            title=f'{key} ({crop}; {model}, gravity {args.gravity_align})')
        summary[key] = {'points': len(last.xyz), 'instances': len(last.instances_info), 'label_shares': shares(
            last.labels)}
    frame = load_pcd(args.shared / 'pcl_office1.pcd')
    xyz = optical_to_z_up(frame.xyz)
    result = segmenter.segment(xyz, frame.rgb, frame.intensity)
    render_segmentation(xyz, result.labels, result.instances, names, args.out / 'office.png',
                        title=f'PCL office scan ({model})')
    summary['office'] = {'points': len(xyz), 'instances': len(result.instances_info),
                         'label_shares': shares(np.asarray(result.labels))}
    (args.out / 'summary.json').write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == '__main__':
    main()
