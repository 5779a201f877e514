"""The supervisord event listener: its side of the protocol, and the entries it writes."""

from __future__ import annotations

import io

from fleetmon.supervisor import registry as reg
from fleetmon.supervisor.supervisord_events import Registrar, listen
from fleetmon.wire import Thresholds


def event(name: str, payload: str, serial: int = 1) -> bytes:
    body = payload.encode()
    return f"ver:3.0 server:supervisor serial:{serial} pool:fm poolserial:{serial} eventname:{name} len:{len(body)}\n".encode() + body


def running(group: str, process: str, pid: int) -> bytes:
    return event("PROCESS_STATE_RUNNING", f"processname:{process} groupname:{group} from_state:STARTING pid:{pid}")


def serve(registry, events: list[bytes], patterns=("agent-*", "pool"), agent_type=None):
    said: list[str] = []
    out = io.BytesIO()
    rc = listen(Registrar(registry, list(patterns), agent_type, said.append), io.BytesIO(b"".join(events)), out)
    return rc, out.getvalue(), said


def entries(registry) -> dict:
    found, errors = reg.read_all(registry)
    assert errors == {}
    return {k: (e.type, e.pid, e.pidfile, e.thresholds) for k, e in found.items()}


def test_answers_every_event_and_registers_matching_programs(tmp_path):
    registry = tmp_path / "registry"
    rc, out, said = serve(registry, [
        running("agent-1", "agent-1", 101),
        running("pool", "pool_00", 102),  # a process of a group with numprocs
        running("other", "other", 103),  # not matched
        event("TICK_5", "when:1700000000"),  # not subscribed to, answered all the same
    ])
    assert rc == 0  # standard input closed: supervisord went away
    assert out == b"READY\n" + b"RESULT 2\nOKREADY\n" * 4  # one result per event, READY before each
    assert entries(registry) == {"agent-1": ("default", 101, None, None), "pool.pool_00": ("default", 102, None, None)}
    assert said == ["registered agent-1 (pid 101)", "registered pool.pool_00 (pid 102)"]


def test_a_restart_rewrites_the_pid_and_keeps_the_entry_s_own_type_and_thresholds(tmp_path):
    registry = tmp_path / "registry"
    own = Thresholds(cpu_threshold=50, threshold_duration=60)
    reg.write_entry(registry, reg.RegistryEntry("agent-1", "web", 100, None, own))
    reg.write_entry(registry, reg.RegistryEntry("agent-2", "web", None, "/run/agent-2.pid"))
    _, _, said = serve(registry, [running("agent-1", "agent-1", 200), running("agent-1", "agent-1", 200), running("agent-2", "agent-2", 300)])
    assert entries(registry) == {"agent-1": ("web", 200, None, own), "agent-2": ("web", None, "/run/agent-2.pid", None)}
    assert said[0] == "registered agent-1 (pid 200), was pid 100"  # once: the same pid again changes nothing
    assert "registered by pidfile" in said[1] and len(said) == 2
    serve(registry, [running("agent-1", "agent-1", 201)], agent_type="batch")  # --type wins over the entry's
    assert entries(registry)["agent-1"] == ("batch", 201, None, own)


def test_what_cannot_be_registered_is_logged_and_answered_ok(tmp_path):
    registry = tmp_path / "registry"
    registry.mkdir()
    (registry / "agent-3.json").write_text("{not json")
    rc, out, said = serve(registry, [
        running("agent-x", "agent-x:1", 101),  # a name that is no valid id
        event("PROCESS_STATE_RUNNING", "processname:agent-2 groupname:agent-2 from_state:STARTING"),  # no pid
        running("agent-3", "agent-3", 103),  # over a file that does not parse: replaced
        event("PROCESS_STATE_RUNNING", "processname:agent-4 groupname:agent-4 from_state:STARTING pid:0"),
        event("PROCESS_STATE_RUNNING", "processname:agent-5 groupname:agent-5 from_state:STARTING pid:1_0"),
    ])
    assert rc == 0 and out.count(b"RESULT 2\nOK") == 5
    assert "invalid agent id" in said[0] and "'pid'" in said[1] and "is replaced" in said[2]
    assert said[3] == "registered agent-3 (pid 103)"
    assert "agent-4:agent-4 not registered: pid 0 out of range" == said[4] and "not a whole number" in said[5]
    assert entries(registry) == {"agent-3": ("default", 103, None, None)}


def test_a_stream_that_is_not_supervisord_s_is_refused(tmp_path):
    rc, out, said = serve(tmp_path / "registry", [b"hello there\n"])
    assert rc == 2 and out == b"READY\n" and "not a supervisord event header" in said[0]
