"""LiDAR street-scene simulator: determinism, physical sanity, labels, KITTI output, CLI."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np
import pytest

from fastpillars_ros.boxes import points_in_boxes
from fastpillars_ros.datasets.kitti import KittiDataset
from fastpillars_ros.sim import cli, objects
from fastpillars_ros.sim.generate import (
    KITTI_LABEL_GROWTH,
    MIN_POINTS,
    label_boxes,
    render_scene,
    scene_rng,
    simulate_frame,
    write_frame,
)
from fastpillars_ros.sim.raycast import cast_rays, ground_hits
from fastpillars_ros.sim.scene import LABEL_MARGIN, Ground, Scene
from fastpillars_ros.sim.sensors import SensorModel, get_sensor
from fastpillars_ros.sim.street import KITTI_VRU_DISTANCE, street_scene


@pytest.fixture(scope="module")
def frame():
    return simulate_frame(7, 0, "hdl64")


@pytest.fixture(scope="module")
def ramp_frame():
    """Scene 0 of seed 7 with a grade change ahead of and behind the sensor."""
    return simulate_frame(7, 0, "hdl64", ramps=1.0)


@pytest.fixture(scope="module")
def kitti_style_frame():
    """Scene 0 of seed 7 with its labels drawn the way KITTI's annotators draw them."""
    return simulate_frame(7, 0, "hdl64", label_style="kitti")


def _object_points(frame, j):
    return frame.points[frame.scan.owner == frame.object_ids[j], :3]


def test_same_seed_gives_identical_arrays(frame):
    again = simulate_frame(7, 0, "hdl64")
    assert np.array_equal(frame.points, again.points)
    assert np.array_equal(frame.boxes, again.boxes) and frame.types == again.types
    assert np.array_equal(frame.num_points, again.num_points)


def test_different_seed_or_index_differs(frame):
    for seed, index in ((8, 0), (7, 1)):
        other = simulate_frame(seed, index, "hdl64")
        assert other.points.shape != frame.points.shape or not np.array_equal(other.points, frame.points)
        assert other.boxes.shape != frame.boxes.shape or not np.allclose(other.boxes, frame.boxes)


def test_hdl64_point_count_is_kitti_like(frame):
    assert 100_000 <= len(frame.points) <= 130_000
    assert frame.points.dtype == np.float32 and frame.points.shape[1] == 4
    assert 0.0 <= frame.points[:, 3].min() and frame.points[:, 3].max() <= 1.0


def _ground_levels(g, p):
    """Road, sidewalk and actual ground height under each point (grade changes included)."""
    level = replace(g, grades=((0.0, 0.0), (0.0, 0.0)))
    ramp = g.height(p[:, 0], p[:, 1]) - level.height(p[:, 0], p[:, 1])
    road = g.z0 + g.slope[0] * p[:, 0] + g.slope[1] * p[:, 1] + ramp
    return road, road + g.kerb_height, g.height(p[:, 0], p[:, 1])


@pytest.mark.parametrize("which", ["frame", "ramp_frame"])
def test_ground_points_lie_on_the_ground(which, request):
    frame = request.getfixturevalue(which)
    g = frame.scene.ground
    p = frame.points[frame.scan.owner == -1].astype(np.float64)
    levels = np.stack(_ground_levels(g, p), axis=1)
    # on the road, sidewalk or terrain plane, or on a vertical face between them (noise 2 cm rms)
    near = np.abs(p[:, 2:3] - levels).min(axis=1) < 0.1
    between = (p[:, 2] > levels.min(axis=1)) & (p[:, 2] < levels.max(axis=1))
    assert len(p) > 30_000 and (near | between).all()
    assert np.median(np.abs(p[:, 2] - g.height(p[:, 0], p[:, 1]))) < 0.03


def test_ramps_change_only_the_ground_beyond_the_grade_change(frame, ramp_frame):
    g = ramp_frame.scene.ground
    (ahead, up), (behind, down) = g.grades
    assert up != 0.0 and down != 0.0 and frame.scene.ground.grades == ((0.0, 0.0), (0.0, 0.0))
    # the same street, objects in the same places, each standing on the (now sloped) ground under it
    assert len(ramp_frame.scene.objects) == len(frame.scene.objects)
    a = np.array([o.box for o in frame.scene.objects])
    b = np.array([o.box for o in ramp_frame.scene.objects])
    assert np.array_equal(a[:, [0, 1, 3, 4, 5, 6]], b[:, [0, 1, 3, 4, 5, 6]])
    u = a[:, :2] @ g.axis_dir
    near = (u <= ahead) & (u >= -behind)
    assert near.any() and (~near).any()
    assert np.array_equal(a[near, 2], b[near, 2])
    # beyond it each object is lifted by what the ramp adds to the ground under it (under the point it was
    # placed at, which may lie up to ~1 m from its box centre: 0.1 m at the steepest grade)
    ramp = g.height(a[:, 0], a[:, 1]) - frame.scene.ground.height(a[:, 0], a[:, 1])
    assert np.allclose(b[:, 2] - a[:, 2], ramp, atol=0.1) and np.abs(ramp[~near]).max() > 1.0


def test_crossings_only_add_vehicles_across_the_road():
    sensor = get_sensor("hdl64")
    added = 0
    for index in range(4):
        plain = street_scene(scene_rng(7, index), sensor)
        crossing = street_scene(scene_rng(7, index), sensor, crossings=1.0)
        before = np.array([o.box for o in plain.objects])
        # the same street and objects, in the same order; the crossing vehicles come after them
        assert np.array_equal(np.array([o.box for o in crossing.objects[:len(before)]]), before)
        for obj in crossing.objects[len(before):]:
            assert obj.kitti_type in ("Car", "Van", "Truck")
            across = abs((obj.box[6] - crossing.ground.road_dir) % np.pi - np.pi / 2)
            assert across < np.radians(30)  # side on to the road's own traffic
            u = obj.box[:2] @ crossing.ground.axis_dir
            assert 8.0 - 12.0 < abs(u) < 45.0 + 12.0  # about CROSSING_AT from the sensor (3 m spread, car length)
            added += 1
    assert added >= 4


def test_street_scene_refuses_a_crossings_probability_outside_0_1():
    with pytest.raises(ValueError, match="crossings must be a probability"):
        street_scene(scene_rng(7, 0), get_sensor("hdl64"), crossings=1.5)


def _distances(scene, kitti_type: str) -> np.ndarray:
    return np.array([np.hypot(*o.box[:2]) for o in scene.objects if o.kitti_type == kitti_type])


def test_kitti_vru_ranges_bring_pedestrians_and_cyclists_nearer_among_the_same_vehicles():
    sensor = get_sensor("hdl64")
    near, far = {"Pedestrian": [], "Cyclist": []}, {"Pedestrian": [], "Cyclist": []}
    for index in range(6):
        uniform = street_scene(scene_rng(7, index), sensor)
        kitti = street_scene(scene_rng(7, index), sensor, vru_ranges="kitti")
        # everything drawn before the first pedestrian or cyclist (the street, its buildings and every vehicle)
        first = next(i for i, o in enumerate(uniform.objects) if o.kitti_type in ("Pedestrian", "Cyclist"))
        assert np.array_equal(np.array([o.box for o in kitti.objects[:first]]),
                              np.array([o.box for o in uniform.objects[:first]]))
        for scene in (uniform, kitti):
            assert all(o.kitti_type not in ("Car", "Van", "Truck") for o in scene.objects[first:])
        for kind in near:
            near[kind] += list(_distances(kitti, kind))
            far[kind] += list(_distances(uniform, kind))
    for kind, (median, _) in (("Pedestrian", KITTI_VRU_DISTANCE["pedestrian"]),
                              ("Cyclist", KITTI_VRU_DISTANCE["cyclist"])):
        assert len(near[kind]) >= 5
        # the along-road medians plus the sidewalk's or lane's offset; uniform puts them about twice as far
        assert np.median(near[kind]) < median + 8.0 < np.median(far[kind])
        assert max(near[kind]) <= 62.0


def test_street_scene_refuses_unknown_vru_ranges():
    with pytest.raises(ValueError, match="vru_ranges must be one of"):
        street_scene(scene_rng(7, 0), get_sensor("hdl64"), vru_ranges="near")


def test_a_ray_meets_the_ramp_ahead_and_passes_over_a_crest():
    flat = Ground(z0=-1.73)
    uphill = replace(flat, grades=((10.0, 0.2), (0.0, 0.0)))
    crest = replace(flat, grades=((10.0, -0.2), (0.0, 0.0)))
    down = np.array([[20.0, 0.0, -1.73]]) / np.hypot(20.0, 1.73)  # meets the flat road 20 m ahead
    t_flat = ground_hits(Scene(flat), down)[0][0]
    t_up = ground_hits(Scene(uphill), down)[0][0]
    assert abs(t_flat * down[0, 0] - 20.0) < 1e-9
    hit = t_up * down[0]
    assert 10.0 < hit[0] < 20.0 and abs(hit[2] - uphill.height(hit[:1], hit[1:2])[0]) < 1e-9
    assert np.isinf(ground_hits(Scene(crest), down)[0][0])  # the road falls away faster than the ray
    backwards = down * np.array([[-1.0, 1.0, 1.0]])  # the grade change is ahead only
    assert abs(ground_hits(Scene(uphill), backwards)[0][0] - t_flat) < 1e-9


def test_nothing_beyond_max_range_or_below_ground(frame):
    sensor = get_sensor("hdl64")
    r = np.linalg.norm(frame.points[:, :3].astype(np.float64), axis=1)
    assert r.max() <= sensor.max_range + 0.2 and r.min() >= sensor.min_range - 0.2
    lowest = np.stack(_ground_levels(frame.scene.ground, frame.points.astype(np.float64)), axis=1).min(axis=1)
    assert np.all(frame.points[:, 2] >= lowest - 0.15)


def test_object_points_lie_on_their_box(frame):
    for j in range(len(frame.boxes)):
        pts = _object_points(frame, j)
        inside = points_in_boxes(pts, frame.boxes[j:j + 1], margin=0.12)[:, 0]
        assert inside.all(), (frame.types[j], frame.boxes[j])
        if frame.occluded[j] == 0 and len(pts) > 200:  # a well-seen object reaches the top of its box
            top = frame.boxes[j, 2] + frame.boxes[j, 5] / 2 - LABEL_MARGIN
            assert pts[:, 2].max() > top - 0.25


def test_labelled_boxes_contain_the_recorded_point_counts(frame):
    inside = points_in_boxes(frame.points, frame.boxes)
    ground = frame.scan.owner == -1
    counts = inside[~ground].sum(axis=0)
    assert len(frame.boxes) >= 5 and np.all(frame.num_points > 0)
    # a few returns are pushed out of the box by the range noise, or belong to a neighbour touching it
    assert np.all(np.abs(counts - frame.num_points) <= 2 + 0.05 * frame.num_points)
    # ground returns inside a box only lie in its bottom slice (the box stands on the ground)
    bottom = frame.boxes[:, 2] - frame.boxes[:, 5] / 2
    for k in range(len(frame.boxes)):
        z = frame.points[ground & inside[:, k], 2]
        assert np.all(z < bottom[k] + 0.12)
    total = inside.sum(axis=0)
    assert np.all(total - frame.num_points <= 3 + 0.5 * frame.num_points)
    assert np.array_equal(frame.occluded[frame.num_points < MIN_POINTS], np.full((frame.num_points < MIN_POINTS)
                                                                                  .sum(), 3))


def test_labelled_types_and_sizes(frame):
    assert set(frame.types) <= {"Car", "Van", "Truck", "Pedestrian", "Cyclist"}
    rng = np.random.default_rng(0)
    for make, (lo, hi) in ((objects.car, ((3.4, 1.5, 1.33), (4.9, 1.9, 1.62))),
                           (objects.pedestrian, ((0.15, 0.4, 1.5), (0.96, 0.8, 1.9))),
                           (objects.cyclist, ((1.5, 0.5, 1.5), (1.9, 0.85, 1.9)))):
        for _ in range(100):
            a, b = make(rng).extent()
            size = b - a
            assert np.all(size >= np.array(lo) - 1e-6) and np.all(size <= np.array(hi) + 1e-6), (make, size)
            assert abs(a[2]) < 1e-9  # standing on the ground
            assert len(make(rng).kind) >= 4  # more than a single box


def test_kitti_label_style_resizes_pedestrian_and_cyclist_boxes_only(frame, kitti_style_frame):
    assert np.array_equal(kitti_style_frame.points, frame.points)  # the scan does not depend on the labels
    assert kitti_style_frame.types == frame.types and {"Pedestrian", "Cyclist", "Car"} <= set(frame.types)
    for k, name in enumerate(frame.types):
        grow_l, grow_w = KITTI_LABEL_GROWTH.get(name, (0.0, 0.0))
        tight, kitti = frame.boxes[k], kitti_style_frame.boxes[k]
        assert np.array_equal(kitti[[0, 1, 2, 5, 6]], tight[[0, 1, 2, 5, 6]]), name  # centre, height, heading
        assert kitti[3] == pytest.approx(max(tight[3] + grow_l, 0.3)), name
        assert kitti[4] == pytest.approx(max(tight[4] + grow_w, 0.3)), name
    peds = [k for k, n in enumerate(frame.types) if n == "Pedestrian"]
    assert np.all(kitti_style_frame.boxes[peds, 3] > frame.boxes[peds, 3])
    assert kitti_style_frame.meta["label_style"] == "kitti" and "label_style" not in frame.meta


def test_label_boxes_refuses_an_unknown_style():
    with pytest.raises(ValueError, match="label_style"):
        label_boxes(np.zeros((0, 7)), [], "nuscenes")


def _flat_scene() -> Scene:
    return Scene(Ground(z0=-1.73))


def test_occluded_object_gets_fewer_points():
    sensor = get_sensor("hdl64")
    car = objects.car(np.random.default_rng(1))
    alone = _flat_scene()
    alone.add_shape(car, 20.0, 0.0, 0.0, "Car", "car", np.random.default_rng(2))
    blocked = _flat_scene()
    blocked.add_shape(car, 20.0, 0.0, 0.0, "Car", "car", np.random.default_rng(2))
    blocked.add_shape(objects.van(np.random.default_rng(3)), 10.0, 0.5, 0.0, "Van", "van", np.random.default_rng(4))
    f_alone = render_scene(alone, sensor, np.random.default_rng(5))
    f_blocked = render_scene(blocked, sensor, np.random.default_rng(5))
    n_alone = f_alone.num_points[list(f_alone.object_ids).index(0)]
    n_blocked = f_blocked.num_points[list(f_blocked.object_ids).index(0)] if 0 in f_blocked.object_ids else 0
    assert n_alone > 150 and n_blocked < 0.5 * n_alone
    assert f_alone.occluded[0] == 0


def test_sector_culling_matches_brute_force():
    sensor = SensorModel("small", tuple(np.linspace(-24.9, 2.0, 12)), columns=240, mount_height=1.73,
                         max_range=80.0)
    scene = simulate_frame(3, 2, sensor).scene
    a = cast_rays(scene, sensor, np.random.default_rng(0), cull=True, effects=False)
    b = cast_rays(scene, sensor, np.random.default_rng(0), cull=False, effects=False)
    assert len(a.points) > 1000 and (a.owner >= 0).sum() > 100
    assert np.array_equal(a.ray, b.ray) and np.array_equal(a.owner, b.owner)
    assert np.allclose(a.points, b.points)


def test_simulate_cli_writes_kitti_layout_and_split_runs_match(tmp_path):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out = tmp_path / "sim"
    assert cli.run(parser.parse_args(["--out", str(out), "--scenes", "2", "--seed", "5", "--no-progress"])) == 0
    for sub, ext in (("velodyne", "bin"), ("label_2", "txt"), ("calib", "txt"), ("sim_meta", "json")):
        assert sorted(p.name for p in (out / sub).iterdir()) == [f"00000{i}.{ext}" for i in range(2)]
    ds = KittiDataset(out)
    f = ds[1]
    assert len(f.extras["num_points"]) == len(f.boxes) and np.all(f.extras["num_points"] > 0)
    meta = json.loads((out / "sim_meta" / "000001.json").read_text())
    assert meta["seed"] == 5 and meta["index"] == 1 and meta["sensor"] == "hdl64"
    assert len(f.points) == meta["num_points"] and f.points.shape[1] == 4
    ours = np.array([o["box"] for o in meta["objects"]])
    allb = np.concatenate([f.boxes, f.ignored_boxes])
    assert len(allb) == len(ours) and set(f.names) <= {"car", "pedestrian", "cyclist"}
    for b in ours:  # every written label comes back as the same LiDAR box
        assert np.min(np.abs(allb - b).max(axis=1)) < 1e-4
    # Scene 1 produced alone (another process / machine) gives identical bytes.
    out2 = tmp_path / "part"
    assert cli.run(parser.parse_args(["--out", str(out2), "--scenes", "1", "--start", "1", "--seed", "5",
                                      "--no-progress"])) == 0
    for sub, ext in (("velodyne", "bin"), ("label_2", "txt"), ("sim_meta", "json")):
        assert (out / sub / f"000001.{ext}").read_bytes() == (out2 / sub / f"000001.{ext}").read_bytes()


def _simulate_one(out, *flags: str) -> int:
    """``simulate`` scene 0 of seed 7 into ``out`` with ``flags``; its exit code."""
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(["--out", str(out), "--scenes", "1", "--seed", "7", "--no-progress", *flags]))


def _meta(out) -> dict:
    return json.loads((out / "sim_meta" / "000000.json").read_text())


@pytest.mark.parametrize("flag", ["--ramps", "--crossings"])
def test_simulate_cli_refuses_probabilities_outside_0_1(tmp_path, capsys, flag):
    assert _simulate_one(tmp_path, flag, "1.5") == 2 and _simulate_one(tmp_path, flag, "-0.1") == 2
    assert f"{flag} is a probability" in capsys.readouterr().err
    assert not (tmp_path / "sim_meta").exists()


def test_simulate_cli_ramps_option_records_the_grades(tmp_path):
    assert _simulate_one(tmp_path, "--ramps", "1") == 0
    assert all(g[1] != 0.0 and 4.0 <= g[0] <= 30.0 for g in _meta(tmp_path)["ground"]["grades"])


def test_simulate_cli_crossings_option_is_recorded(tmp_path):
    assert _simulate_one(tmp_path, "--crossings", "1") == 0
    assert _meta(tmp_path)["crossings"] == 1.0


def test_simulate_cli_vru_ranges_option_is_recorded(tmp_path):
    assert _simulate_one(tmp_path, "--vru-ranges", "kitti") == 0
    assert _meta(tmp_path)["vru_ranges"] == "kitti"


def test_simulate_cli_label_style_option_writes_kitti_sized_labels(tmp_path):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    for style in ("tight", "kitti"):
        assert cli.run(parser.parse_args(["--out", str(tmp_path / style), "--scenes", "1", "--seed", "7",
                                          "--label-style", style, "--no-progress"])) == 0
    tight, kitti = KittiDataset(tmp_path / "tight")[0], KittiDataset(tmp_path / "kitti")[0]
    assert np.array_equal(tight.points, kitti.points) and tight.names == kitti.names
    peds = [k for k, n in enumerate(tight.names) if n == "pedestrian"]
    assert peds and np.allclose(kitti.boxes[peds, 3] - tight.boxes[peds, 3], 0.24, atol=1e-4)
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", str(tmp_path), "--scenes", "1", "--label-style", "loose"])


def test_simulate_cli_mount_height_puts_the_ground_and_the_boxes_that_far_below_the_sensor(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.run(parser.parse_args(["--out", str(tmp_path), "--scenes", "1", "--mount-height", "9"])) == 2
    assert "--mount-height is the sensor's height" in capsys.readouterr().err
    for name, height in (("own", None), ("kitti", "1.73")):
        extra = [] if height is None else ["--mount-height", height]
        assert cli.run(parser.parse_args(["--out", str(tmp_path / name), "--scenes", "1", "--seed", "7", "--sensor",
                                          "vlp32", "--no-progress", *extra])) == 0
    own, kitti = KittiDataset(tmp_path / "own")[0], KittiDataset(tmp_path / "kitti")[0]
    assert own.names == kitti.names
    shift = get_sensor("vlp32").mount_height - 1.73  # 0.07 m: the VLP-32 model sits at 1.80 m
    bottoms = kitti.boxes[:, 2] - kitti.boxes[:, 5] / 2
    assert np.allclose(bottoms - (own.boxes[:, 2] - own.boxes[:, 5] / 2), shift, atol=1e-3)
    near = np.hypot(kitti.points[:, 0], kitti.points[:, 1]) < 6  # the road around the sensor
    assert np.median(kitti.points[near, 2]) == pytest.approx(-1.73, abs=0.05)
    assert json.loads((tmp_path / "kitti" / "sim_meta" / "000000.json").read_text())["mount_height"] == 1.73


def test_write_frame_labels_read_back_with_points(tmp_path, frame):
    write_frame(tmp_path, "000000", frame)
    f = KittiDataset(tmp_path)[0]
    assert np.array_equal(f.points, frame.points)
    counts = points_in_boxes(f.points, f.boxes).sum(axis=0)
    assert np.all(counts > 0)


def test_every_sensor_model_scans_within_its_beam_table():
    for name in ("vlp32", "os1-64", "vls128", "pandar64"):
        sensor = get_sensor(name)
        f = simulate_frame(5, 0, sensor)
        xyz = f.points[:, :3].astype(np.float64)
        r = np.linalg.norm(xyz, axis=1)
        el = np.degrees(np.arcsin(xyz[:, 2] / r))
        assert 0.5 * sensor.beams * sensor.columns < len(f.points) < sensor.beams * sensor.columns
        assert el.min() > sensor.elevations_deg[0] - 0.5 and el.max() < sensor.elevations_deg[-1] + 0.5
        assert f.meta["sensor"] == name and len(f.types) > 0


def test_pandar64_model_has_the_published_beam_layout():
    el = np.array(get_sensor("pandar64").elevations_deg)
    assert len(el) == 64 and el[0] == -25.0 and el[-1] == 15.0 and np.all(np.diff(el) > 0)
    fine = el[(el > -6.01) & (el < 1.9)]
    assert len(fine) == 48 and np.allclose(np.diff(fine), 1.0 / 6.0)   # the dense band about the horizon
