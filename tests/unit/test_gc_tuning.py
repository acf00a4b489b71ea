"""The collector set for a long-running broker (corem_ingress/gc_tuning.py). Pure."""

from __future__ import annotations

import gc

import pytest

from corem_ingress import gc_tuning

pytestmark = pytest.mark.unit


def test_startup_objects_are_frozen_out_of_the_collectors_generations() -> None:
    kept = [[i] for i in range(1000)]  # lives on: frozen with the rest
    try:
        frozen = gc_tuning.freeze_startup_objects()
        assert frozen == gc.get_freeze_count() >= len(kept)
        assert not any(x is kept for x in gc.get_objects())  # no generation holds them now
        assert gc.isenabled()  # young objects are still collected
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
