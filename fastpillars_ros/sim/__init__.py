"""Procedural LiDAR street-scene simulator writing KITTI layout (training data without downloads).

Entry points: :func:`fastpillars_ros.sim.generate.simulate_frame` (one scene from ``(seed, index)``),
:func:`fastpillars_ros.sim.generate.render_scene` (scan a hand-built :class:`~fastpillars_ros.sim.scene.Scene`),
:func:`fastpillars_ros.sim.generate.write_frame` and the ``simulate`` command (:mod:`fastpillars_ros.sim.cli`).
"""
