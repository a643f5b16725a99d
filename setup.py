"""ament_python package definition (used by colcon and by the project's editable install)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "fastpillars_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    package_data={PACKAGE: ["cuda/*.cu", "cuda/*.cuh", "ops/*.c", "data/*.mcap", "weights/*.pt"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz") + glob("config/*.xml")),
        (f"share/{PACKAGE}/config/models", glob("config/models/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="fastpillars_ros maintainers",
    maintainer_email="fastpillars_ros@example.com",
    description="FastPillars LiDAR 3D object detection for ROS 2",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "fastpillars-ros = fastpillars_ros.cli:main",
            "detector_node = fastpillars_ros.ros.node:main",
        ],
    },
)
