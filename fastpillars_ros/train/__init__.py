"""Training of FastPillars models on KITTI-layout data (real KITTI or the simulator's output).

``fastpillars-ros train`` is :mod:`fastpillars_ros.train.command`; the pieces: :mod:`.targets`
(CenterPoint targets, the inverse of the head decoding), :mod:`.losses`, :mod:`.augment`, :mod:`.data`
(samples, batches) and :mod:`.engine` (the loop, checkpoints, resume).
"""
