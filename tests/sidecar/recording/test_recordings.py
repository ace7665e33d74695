"""Which streams are recorded (sample, routes, the control header where the route allows it),
and what becomes of a recording when its stream ends (written off the loop, counted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from streamhop.middleware.controls import NO_CONTROLS, ControlHeaderError, parse_controls
from streamhop.middleware.errors import ConfigError
from streamhop.sidecar.config.model import RecordConfig, RouteConfig
from streamhop.sidecar.observe.record import StreamRecord
from streamhop.sidecar.recording import Recordings
from streamhop.sidecar.recording.recordings import MAX_PENDING_WRITES

ROUTE = RouteConfig(prefix="/a", upstream="http://a", headers={"X-Provider-Token": "t"})
OTHER = RouteConfig(prefix="/b", upstream="http://b", client_record=True)
RECORD_ME = parse_controls([(b"X-Streamhop-Record", b"1")])
DO_NOT = parse_controls([(b"x-streamhop-record", b"0")])


def _recordings(tmp_path: Path, draws: list[float] | None = None, **keys: object) -> Recordings:
    config = RecordConfig(dir=str(tmp_path / "rec"), **keys)  # type: ignore[arg-type]
    recordings = Recordings.from_config(config, CollectorRegistry(), ("x-caller",))
    assert recordings is not None
    values = iter(draws or [])
    recordings._sample = lambda: next(values)
    return recordings


def _count(recordings: Recordings, result: str) -> float:
    return recordings.metrics.recordings.labels(result)._value.get()


def _record(sse: bool = True) -> StreamRecord:
    record = StreamRecord(stream_id="s", route="/a", method="POST", path="/v1", received_at=1.0)
    record.sse = sse
    record.status = 200
    return record


def test_off_without_a_directory() -> None:
    assert Recordings.from_config(RecordConfig(), CollectorRegistry(), ()) is None


def test_an_unusable_directory_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"record\.dir"):
        Recordings.from_config(RecordConfig(dir=str(blocker / "x")), CollectorRegistry(), ())


def test_the_control_header_parses() -> None:
    assert RECORD_ME.record is True and DO_NOT.record is False
    assert NO_CONTROLS.record is None
    assert RECORD_ME.over(NO_CONTROLS).record is True
    assert NO_CONTROLS.over(DO_NOT).record is False
    with pytest.raises(ControlHeaderError, match="X-Streamhop-Record must be '1' or '0'"):
        parse_controls([(b"X-Streamhop-Record", b"yes")])


def test_sampling_applies_to_the_listed_routes(tmp_path: Path) -> None:
    recordings = _recordings(tmp_path, [0.1, 0.3], sample=0.25, routes=("/a",))
    assert recordings.wanted(ROUTE, NO_CONTROLS)  # 0.1 < 0.25
    assert not recordings.wanted(ROUTE, NO_CONTROLS)  # 0.3
    assert not recordings.wanted(OTHER, NO_CONTROLS)  # not sampled: no draw taken
    everywhere = _recordings(tmp_path, [0.0], sample=1.0)
    assert everywhere.wanted(OTHER, NO_CONTROLS)
    never = _recordings(tmp_path, [], sample=0.0)
    assert not never.wanted(ROUTE, NO_CONTROLS)


def test_the_header_decides_only_where_the_route_allows_it(tmp_path: Path) -> None:
    recordings = _recordings(tmp_path, [0.9], sample=0.5)
    assert recordings.wanted(OTHER, RECORD_ME)  # client_record = true
    assert not recordings.wanted(OTHER, DO_NOT)
    assert not recordings.wanted(ROUTE, RECORD_ME)  # ignored here: the sample (0.9) decides


async def test_a_finished_stream_is_written_and_counted(tmp_path: Path) -> None:
    recordings = _recordings(tmp_path, record_request=True)
    headers = [("Authorization", "Bearer sk"), ("X-Provider-Token", "t"), ("x-caller", "c")]
    recorder = recordings.start(OTHER, RECORD_ME, headers, b'{"model": "m"}')
    assert recorder is not None
    recorder.add(b"data: hi\n\n", 1.01)
    record = _record()
    recorder.end(record)
    await recordings.aclose()
    directory = tmp_path / "rec"
    assert (directory / f"{record.request_id}.sse").read_bytes() == b"data: hi\n\n"
    timeline = json.loads((directory / f"{record.request_id}.json").read_bytes())
    assert timeline["request_body"] == '{"model": "m"}'
    assert timeline["request_headers"] == [
        ["Authorization", "[redacted]"],
        ["X-Provider-Token", "[redacted]"],
        ["x-caller", "[redacted]"],
    ]
    assert _count(recordings, "written") == 1
    (sample,) = recordings.metrics.disk_bytes.collect()[0].samples
    assert sample.value == recordings.store.bytes > 0


async def test_what_is_not_written(tmp_path: Path) -> None:
    recordings = _recordings(tmp_path, max_recording_bytes=1024, max_bytes=1024)
    not_sse = recordings.start(OTHER, RECORD_ME, [], b"")
    assert not_sse is not None
    not_sse.end(_record(sse=False))  # a JSON answer: nothing to replay, not counted
    too_large = recordings.start(OTHER, RECORD_ME, [], b"")
    assert too_large is not None
    too_large.add(b"x" * 1025, 1.5)
    too_large.end(_record())
    # The pair is over max_bytes once the timeline is added: refused by the store.
    almost = recordings.start(OTHER, RECORD_ME, [], b"")
    assert almost is not None
    almost.add(b"x" * 1000, 1.5)
    almost.end(_record())
    await recordings.aclose()
    assert list((tmp_path / "rec").iterdir()) == []
    assert _count(recordings, "too_large") == 2 and _count(recordings, "written") == 0


async def test_writes_past_the_pending_bound_are_dropped(tmp_path: Path) -> None:
    recordings = _recordings(tmp_path)
    for _ in range(MAX_PENDING_WRITES + 2):
        recorder = recordings.start(OTHER, RECORD_ME, [], b"")
        assert recorder is not None
        recorder.add(b"data: x\n\n", 1.1)
        recorder.end(_record())  # no await between: every write is still pending
    await recordings.aclose()
    assert _count(recordings, "written") == MAX_PENDING_WRITES
    assert _count(recordings, "dropped") == 2


async def test_a_failed_write_is_counted_and_the_stream_unaffected(tmp_path: Path) -> None:
    recordings = _recordings(tmp_path)
    recorder = recordings.start(OTHER, RECORD_ME, [], b"")
    assert recorder is not None
    record = _record()
    (tmp_path / "rec" / f"{record.request_id}.json").mkdir()
    recorder.add(b"data: x\n\n", 1.1)
    recorder.end(record)
    await recordings.aclose()
    assert _count(recordings, "failed") == 1
