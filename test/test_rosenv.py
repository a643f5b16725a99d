"""The network rule: every ROS process the project starts keeps DDS traffic on loopback."""

from __future__ import annotations

import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from ros_processes import spawn_python, stop

from fastpillars_ros.ros.rosenv import fast_dds_3_in, is_loopback_environment, loopback_environment, profile_path

NS = {"d": "http://www.eprosima.com"}


def test_test_session_runs_with_loopback_only_dds_settings():
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert os.environ["RMW_IMPLEMENTATION"] == "rmw_fastrtps_cpp"
    assert Path(os.environ["FASTDDS_DEFAULT_PROFILES_FILE"]) == profile_path()
    assert is_loopback_environment()


def test_loopback_environment_overrides_a_users_wider_settings():
    env = loopback_environment({"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET", "ROS_STATIC_PEERS": "192.0.2.7",
                                "RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}, domain_id=42)
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert "ROS_STATIC_PEERS" not in env
    assert env["RMW_IMPLEMENTATION"] == "rmw_fastrtps_cpp"
    assert env["ROS_DOMAIN_ID"] == "42"


def test_the_fast_dds_major_is_told_by_the_library_under_a_prefix(tmp_path):
    jazzy, kilted = tmp_path / "jazzy", tmp_path / "kilted"
    for prefix, library in ((jazzy, "libfastrtps.so.2.14.5"), (kilted, "libfastdds.so.3.2.2")):
        (prefix / "lib").mkdir(parents=True)
        (prefix / "lib" / library).touch()
    assert not fast_dds_3_in([str(jazzy)])
    assert fast_dds_3_in([str(jazzy), str(kilted)])


def test_fastdds_profile_allows_only_loopback_udp_and_disables_builtin_transports():
    root = ET.parse(profile_path()).getroot()
    participant = root.find("d:profiles/d:participant", NS)
    assert participant.get("is_default_profile") == "true"
    assert participant.find("d:rtps/d:useBuiltinTransports", NS).text.strip() == "false"
    used = {t.text.strip() for t in participant.findall("d:rtps/d:userTransports/d:transport_id", NS)}
    descriptors = {d.find("d:transport_id", NS).text.strip(): d
                   for d in root.findall("d:profiles/d:transport_descriptors/d:transport_descriptor", NS)}
    assert used <= set(descriptors)
    kinds = {descriptors[t].find("d:type", NS).text.strip() for t in used}
    assert kinds == {"SHM", "UDPv4"}
    for t in used:
        if descriptors[t].find("d:type", NS).text.strip() == "UDPv4":
            allowed = [i.get("name") for i in descriptors[t].findall("d:interfaces/d:allowlist/d:interface", NS)]
            assert allowed == ["127.0.0.1"]
        else:
            assert int(descriptors[t].find("d:segment_size", NS).text) >= 32 * 1024 * 1024


@pytest.mark.skipif(os.environ.get("FASTPILLARS_NETNS") != "1", reason="not started through scripts/netns_run.sh")
def test_make_test_runs_inside_a_network_namespace_with_only_loopback():
    lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    assert [line.split(":")[0].strip() for line in lines] == ["lo"]


@pytest.mark.ros
def test_a_child_process_exchanges_messages_over_the_loopback_profile():
    """A publisher in another process reaches a subscriber here, and Fast DDS accepted the profile."""
    import rclpy
    from std_msgs.msg import String

    publisher = spawn_python(
        "import rclpy, time\n"
        "from std_msgs.msg import String\n"
        "rclpy.init(); n = rclpy.create_node('rosenv_pub'); p = n.create_publisher(String, 'rosenv_probe', 10)\n"
        "for i in range(200):\n"
        "    p.publish(String(data='hello %d' % i)); time.sleep(0.05)\n")
    rclpy.init()
    try:
        node = rclpy.create_node("rosenv_sub")
        got: list[str] = []
        node.create_subscription(String, "rosenv_probe", lambda m: got.append(m.data), 10)
        deadline = time.monotonic() + 20.0
        while not got and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
        node.destroy_node()
    finally:
        rclpy.shutdown()
        try:  # it ends by itself after its 200 messages: a Ctrl-C would put rclpy's shutdown errors in err
            publisher.wait(timeout=60)
        finally:
            _, err = stop(publisher)
    assert got and got[0].startswith("hello")
    assert "XMLPARSER" not in err and "Error" not in err, err


@pytest.mark.ros
def test_a_child_process_runs_with_the_profiles_32_mib_shared_memory_segment_and_no_warning():
    """The profile is in force whatever the Fast DDS major (2 on Jazzy reads another variable than 3 on Kilted):
    the participant maps the profile's 32 MiB segment, not the default 512 KiB one, and no deprecated
    variable is set."""
    child = spawn_python("import rclpy, time\n"
                         "rclpy.init(); n = rclpy.create_node('rosenv_shm')\n"
                         "print('up', flush=True); time.sleep(60)\n")
    try:
        assert child.stdout.readline() == "up\n"
        segments = []
        for line in Path(f"/proc/{child.pid}/maps").read_text().splitlines():
            name = line.split()[-1]
            if name.startswith(("/dev/shm/fastdds_", "/dev/shm/fastrtps_")) and "port" not in name:
                start, end = (int(a, 16) for a in line.split()[0].split("-"))
                segments.append(end - start)
    finally:
        _out, err = stop(child)
    assert segments and max(segments) >= 32 * 1024 * 1024, segments
    assert "deprecated" not in err, err
