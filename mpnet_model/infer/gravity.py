"""Gravity alignment without tf: estimate the up axis from the cloud, segment in a gravity-aligned frame, and give
the results back in the input frame.

A pitched camera makes the floor look like a wall to a model trained with z up. Indoors the dominant surface
whose normal lies within `max_tilt` of the frame's nominal up is the floor (or, equally useful, the ceiling or a
table top: all share the up axis), so the estimator is a plane RANSAC restricted to that cone, vectorised in
numpy (hypotheses x points in one pass; each hypothesis a seed point and two of its nearest neighbours), the best
supported refined by least-squares fits (SVD) on a narrowing inlier band; a refit that leaves the cone (a wall
dragging the plane over) is rejected.
Walls, 90 deg away from up, cannot win for tilts under `max_tilt` (45 deg); clutter is outvoted by the floor.
When no plane holds `min_inlier_fraction` of the points (a camera facing a wall), the cloud is left as it is.
A camera pitched down steeply at a table (a manipulation view: 30-70 deg) sees its dominant plane beyond the 45 deg
cone; when the nominal cone holds no plane, a second pass searches the cone of `DEFAULT_WIDE_TILT_DEG` (a wall,
90 deg from up, stays outside it; the real Kinect tabletop frames' table top lies 46 deg from the optical -y axis).

Nominal up (`prior_up_for_frame`): +z for body / lidar frames (REP 103), -y for optical frames (`*_optical_frame`:
x right, y down, z forward).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

DEFAULT_MAX_TILT_DEG = 45.0
DEFAULT_WIDE_TILT_DEG = 70.0         # the second pass when the nominal cone holds no plane
DEFAULT_INLIER_DISTANCE = 0.03       # m
DEFAULT_MIN_INLIER_FRACTION = 0.03
# A cloud already level within this angle of its nominal up is left as mounted: a rotation of a degree moves points
# across block borders (a 1.1 deg correction of the Ouster golden crop changed 24 % of its labels) and, re-estimated
# every frame, would make labels flicker; a real tilt (a pitched camera, a robot on a ramp) is far larger.
DEFAULT_MIN_TILT_DEG = 2.0
GRAVITY_MODES = ('auto', 'off')


@dataclass(frozen=True)
class GravityEstimate:
    up: np.ndarray              # (3,) unit up axis in the input frame
    rotation: np.ndarray        # (3,3) R with R @ up = +z (aligned = xyz @ R.T); identity when not found
    inlier_fraction: float      # share of (sampled) points on the winning plane
    found: bool

    @property
    def tilt_deg(self) -> float:
        """Angle between the estimated up and the input frame's z axis."""
        return float(np.degrees(np.arccos(np.clip(self.up[2], -1.0, 1.0))))


def prior_up_for_frame(frame_id: str) -> np.ndarray:
    """Nominal up of a frame by its name: -y for optical frames, +z otherwise."""
    return np.array([0.0, -1.0, 0.0]) if frame_id.endswith('optical_frame') else np.array([0.0, 0.0, 1.0])


def rotation_to_z(up: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit vector `up` to +z (Rodrigues); a flip about x when up = -z."""
    up = np.asarray(up, np.float64) / np.linalg.norm(up)
    axis = np.cross(up, [0.0, 0.0, 1.0])
    s, c = np.linalg.norm(axis), float(up[2])
    if s < 1e-12:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    k = axis / s
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + s * kx + (1 - c) * kx @ kx


def estimate_up(xyz: np.ndarray, prior_up=(0.0, 0.0, 1.0), max_tilt_deg: float = DEFAULT_MAX_TILT_DEG,
                inlier_distance: float = DEFAULT_INLIER_DISTANCE,
                min_inlier_fraction: float = DEFAULT_MIN_INLIER_FRACTION, hypotheses: int = 256,
                max_points: int = 10_000, seed: int = 0, wide_tilt_deg: float | None = DEFAULT_WIDE_TILT_DEG
                ) -> GravityEstimate:
    """Up axis of a cloud (N,3) from its dominant plane within `max_tilt_deg` of `prior_up` (see module doc); when
    none is found there, within `wide_tilt_deg` (None or <= max_tilt_deg: no second pass)."""
    estimate = _estimate_up(xyz, prior_up, max_tilt_deg, inlier_distance, min_inlier_fraction, hypotheses,
                            max_points, seed)
    if estimate.found or wide_tilt_deg is None or wide_tilt_deg <= max_tilt_deg:
        return estimate
    return _estimate_up(xyz, prior_up, wide_tilt_deg, inlier_distance, min_inlier_fraction, hypotheses, max_points,
                        seed)


def _estimate_up(xyz: np.ndarray, prior_up, max_tilt_deg: float, inlier_distance: float,
                 min_inlier_fraction: float, hypotheses: int, max_points: int, seed: int) -> GravityEstimate:
    prior = np.asarray(prior_up, np.float64)
    prior = prior / np.linalg.norm(prior)
    xyz = np.asarray(xyz, np.float64)
    xyz = xyz[np.isfinite(xyz).all(axis=1)]
    not_found = GravityEstimate(prior, rotation_to_z(prior), 0.0, False)
    if len(xyz) < 50:
        return not_found
    # Keyed draws (`mpnet_model.data.point_keys`): the subsample is the points with the smallest coordinate keys, the
    # hypotheses' seed points the smallest of a second key, and each seed picks its neighbours from its own key, so
    # that one added point (a stray return) or a crop changes at most a few draws, not all of them.
    from mpnet_model.data.point_keys import hash_fields_np, point_keys_np

    keys = point_keys_np(xyz, seed)
    if len(xyz) > max_points:
        keep = np.argpartition(keys, max_points - 1)[:max_points]
        xyz, keys = xyz[keep], keys[keep]
    order = np.argsort(keys, kind='stable')
    points, keys = xyz[order], keys[order]
    # local triples (a seed point and two of its 32 nearest neighbours, not collinear) lie on one surface far more
    # often than three random points: the floor, a large share of the seeds, yields many good hypotheses; 32
    # neighbours reach across a lidar's rings, whose nearest points alone lie on one line
    from scipy.spatial import cKDTree

    seed_keys = hash_fields_np([seed + 1, keys.view(np.int64)])
    seeds = np.argsort(seed_keys, kind='stable')[:hypotheses]
    hypotheses = len(seeds)
    k = min(32, len(points))
    _, neighbours = cKDTree(points).query(points[seeds], k=k)
    picks = [hash_fields_np([seed + 2 + j, keys[seeds].view(np.int64)]) % np.uint64(k - 1) for j in range(2)]
    pick = np.stack(picks, 1).astype(np.int64) + 1
    rows = np.arange(hypotheses)
    a = points[neighbours[rows, pick[:, 0]]] - points[seeds]
    b = points[neighbours[rows, pick[:, 1]]] - points[seeds]
    normals = np.cross(a, b)
    length = np.linalg.norm(normals, axis=1)
    ok = length > 0.2 * np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12   # angle > ~12 deg
    normals, anchors = normals[ok] / length[ok, None], points[seeds][ok]
    normals *= np.sign(normals @ prior)[:, None]                                   # point them along the prior
    cos_cone = np.cos(np.radians(max_tilt_deg))
    ok = normals @ prior >= cos_cone
    if not ok.any():
        return not_found
    normals, anchors = normals[ok], anchors[ok]
    offsets = np.einsum('hj,hj->h', normals, anchors)                              # (H,)
    distance = np.abs(points.astype(np.float32) @ normals.T.astype(np.float32) - offsets.astype(np.float32))  # (P,H)
    support = (distance < inlier_distance).sum(axis=0)
    best = None
    for h in np.argsort(-support)[:5]:               # the best-supported hypotheses, refined; one must stay level
        refined = _refine(points, normals[h], anchors[h], prior, inlier_distance)
        if refined is not None and refined[0] @ prior >= cos_cone and (best is None or refined[1] > best[1]):
            best = refined
    if best is None or best[1] < max(3, min_inlier_fraction * len(points)):
        return not_found
    return GravityEstimate(best[0], rotation_to_z(best[0]), best[1] / len(points), True)


def _refine(points: np.ndarray, normal: np.ndarray, anchor: np.ndarray, prior: np.ndarray, inlier_distance: float
            ) -> tuple[np.ndarray, int] | None:
    """Least-squares refits (SVD) of a plane on its inliers, the band narrowing 4x -> 2x -> 1x `inlier_distance`
    (a hypothesis a few degrees off still gathers its whole plane); (normal, inlier count) or None."""
    centre = anchor
    inliers = points[:0]
    for scale in (4.0, 2.0, 1.0, 1.0):
        inliers = points[np.abs((points - centre) @ normal) < scale * inlier_distance]
        if len(inliers) < 3:
            return None
        centre = inliers.mean(axis=0)
        normal = np.linalg.svd(inliers - centre, full_matrices=False)[2][-1]
        normal = normal * (np.sign(normal @ prior) or 1.0)
    return normal, int((np.abs((points - centre) @ normal) < inlier_distance).sum())


def alignment_rotation(estimate: GravityEstimate, prior_up=(0.0, 0.0, 1.0),
                       min_tilt_deg: float = DEFAULT_MIN_TILT_DEG) -> np.ndarray:
    """(3,3) rotation to apply: the estimate's, unless its up is within `min_tilt_deg` of the prior (then the
    prior's: a level sensor stays as mounted, see DEFAULT_MIN_TILT_DEG)."""
    prior = np.asarray(prior_up, np.float64) / np.linalg.norm(prior_up)
    tilt = np.degrees(np.arccos(np.clip(float(estimate.up @ prior), -1.0, 1.0)))
    return estimate.rotation if tilt > min_tilt_deg else rotation_to_z(prior)


def segment_gravity_aligned(segmenter, xyz: np.ndarray, rgb: np.ndarray | None = None,
                            intensity: np.ndarray | None = None, prior_up=(0.0, 0.0, 1.0),
                            min_tilt_deg: float = DEFAULT_MIN_TILT_DEG, floor: float | None = None, origin=None,
                            **estimate_options):
    """`segmenter.segment` on the cloud rotated so the estimated up is +z (the prior's up when the estimate is
    within `min_tilt_deg` of it); per-point outputs need no change, the instance boxes are recomputed in the input
    frame. `floor` (a known floor height in the levelled frame) and `origin` (the sensor position in the input
    frame) go to the segmenter's floor estimate. Returns (SceneResult, GravityEstimate)."""
    start = time.perf_counter()
    xyz = np.asarray(xyz, np.float32)
    estimate = estimate_up(xyz, prior_up, **estimate_options)
    rotation = alignment_rotation(estimate, prior_up, min_tilt_deg)   # the prior's rotation when nothing was found
    aligned = xyz @ rotation.T.astype(np.float32)
    estimate_ms = (time.perf_counter() - start) * 1e3
    options = {} if floor is None else {'floor': floor}
    if origin is not None:
        options['origin'] = rotation @ np.asarray(origin, np.float64)
    result = segmenter.segment(aligned, rgb, intensity, **options)
    boxes_in_input_frame(result, xyz, rotation)
    result.timings = {'gravity': estimate_ms, **result.timings}
    result.timings['total'] = result.timings.get('total', 0.0) + estimate_ms
    return result, estimate


def boxes_in_input_frame(result, xyz: np.ndarray, rotation: np.ndarray | None = None) -> None:
    """Recompute each instance's axis-aligned box (centre, extent) from its points in `xyz` (the input frame); with
    the levelling `rotation` (aligned = R @ input), also turn the oriented box (found in the levelled frame: yaw about
    gravity) back into the input frame (box centre, box orientation; extent and yaw are the levelled frame's)."""
    infos = list(getattr(result, 'instances_info', []) or [])
    if not infos:
        return
    ids = np.asarray(result.instances)
    members = ids >= 0
    lower = np.full((len(infos), 3), np.inf)
    upper = np.full((len(infos), 3), -np.inf)
    np.minimum.at(lower, ids[members], xyz[members])
    np.maximum.at(upper, ids[members], xyz[members])
    back = None if rotation is None else np.asarray(rotation, np.float64).T
    for info in infos:
        info.centre = ((lower[info.id] + upper[info.id]) / 2).astype(np.float32)
        info.extent = (upper[info.id] - lower[info.id]).astype(np.float32)
        if back is not None and getattr(info, 'box_centre', None) is not None:
            from mpnet_model.infer.instances import rotation_quaternion

            cos, sin = np.cos(info.box_yaw), np.sin(info.box_yaw)
            yaw = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
            info.box_centre = (back @ np.asarray(info.box_centre, np.float64)).astype(np.float32)
            info.box_orientation = rotation_quaternion(back @ yaw)
