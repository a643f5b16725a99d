"""``python -m fastpillars_ros.node``: the detector node (:mod:`fastpillars_ros.ros.node`), under its old name.

Kept because launch files, docs and users start the node this way; the node itself lives in ``ros/``.
"""

from fastpillars_ros.ros.node import main

if __name__ == "__main__":
    main()
