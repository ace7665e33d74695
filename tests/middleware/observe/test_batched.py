"""BatchedHistogram adds to a Prometheus histogram exactly what observing each value would."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from streamhop.middleware.observe.batched import BatchedHistogram
from streamhop.middleware.observe.metrics import CADENCE_BUCKETS


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


@given(
    st.lists(
        st.one_of(
            st.floats(min_value=0, max_value=5, allow_nan=False),
            st.sampled_from(CADENCE_BUCKETS),  # values on a bound fall in that bound's bucket
        ),
        max_size=60,
    ),
    st.integers(min_value=1, max_value=7),
)
def test_batched_equals_direct(values: list[float], every: int) -> None:
    direct_registry, batched_registry = CollectorRegistry(), CollectorRegistry()
    direct = Histogram("h", "", ["route"], buckets=CADENCE_BUCKETS, registry=direct_registry)
    batched_family = Histogram(
        "h", "", ["route"], buckets=CADENCE_BUCKETS, registry=batched_registry
    )
    batched = BatchedHistogram(batched_family.labels("/"))
    direct_child = direct.labels("/")
    for index, value in enumerate(values):
        direct_child.observe(value)
        batched.observe(value)
        if index % every == 0:
            batched.flush()
    batched.flush()
    got, want = samples(batched_registry), samples(direct_registry)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == value or abs(got[key] - value) < 1e-9, key
    assert batched.pending == 0


def test_a_child_without_the_known_layout_is_observed_directly() -> None:
    seen: list[float] = []

    class Other:
        def observe(self, value: float) -> None:
            seen.append(value)

    batched = BatchedHistogram(Other())
    batched.observe(0.5)
    batched.flush()
    assert seen == [0.5]
