"""`onething bench --sealing-ab` and the switch it uses (`ONETHING_SEALING=off`): development only.

Production must never write personal data in clear, so the switch is refused outside
`ONETHING_ENV=dev` three times over: by the bench before it starts anything, by every process's
start-up check (infra/safe_config.py), and by `keystore.sealing_on` where the API and the
adapters read it. The A/B's report is pure arithmetic on the CPU figures, checked here too.
"""
from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from infra import bench, bench_sealing, keystore, safe_config
from infra.settings import Settings


def test_the_bench_refuses_the_sealing_ab_outside_development_and_starts_nothing(monkeypatch):
    monkeypatch.setenv("ONETHING_ENV", "production")
    monkeypatch.setenv("ONETHING_DB_NAME", "onething_untouched")
    started = []
    monkeypatch.setattr(bench, "bench_environment", lambda: started.append("stack"))
    from infra.cli import main

    result = CliRunner().invoke(main, ["bench", "--quick", "--sealing-ab"])
    assert result.exit_code != 0
    message = str(result.exception) + result.output
    assert "ONETHING_ENV=dev" in message and "ONETHING_SEALING=off" in message
    assert started == [] and os.environ["ONETHING_DB_NAME"] == "onething_untouched"


def test_the_switch_is_refused_where_sealing_is_read_outside_development():
    with pytest.raises(SystemExit, match="ONETHING_SEALING=off is refused"):
        keystore.sealing_on({"ONETHING_SEALING": "off", "ONETHING_ENV": "production"})
    with pytest.raises(SystemExit, match="ONETHING_SEALING=off is refused"):
        keystore.sealing_on({"ONETHING_SEALING": "off"})
    with pytest.raises(SystemExit, match="ONETHING_SEALING must be on or off"):
        keystore.sealing_on({"ONETHING_SEALING": "no", "ONETHING_ENV": "dev"})
    assert keystore.sealing_on({}) is True and keystore.sealing_on({"ONETHING_ENV": "production"}) is True
    assert keystore.sealing_on({"ONETHING_SEALING": "off", "ONETHING_ENV": "dev"}) is False


def test_a_process_outside_development_refuses_to_start_with_sealing_off():
    env = {"ONETHING_SEALING": "off"}
    found = safe_config.problems(Settings.from_env(), ["api"], env=env)
    assert any(p.startswith("ONETHING_SEALING is not on") for p in found)
    assert not any("ONETHING_SEALING" in p for p in safe_config.problems(Settings.from_env(), ["api"], env={}))
    assert safe_config.problems(Settings.from_env(), ["api"], env=env | {"ONETHING_ENV": "dev"}) == []


def test_the_ab_report_gives_cpu_a_case_per_process_and_the_difference():
    sealed = bench_sealing.per_case_ms({"api": 3.0, "postgresql": 9.0}, 300)
    unsealed = bench_sealing.per_case_ms({"api": 2.0, "postgresql": 9.0}, 200)
    assert sealed == {"api": 10.0, "postgresql": 30.0, "total": 40.0}
    assert unsealed == {"api": 10.0, "postgresql": 45.0, "total": 55.0}
    assert round(bench_sealing.difference_pct(46.0, 40.0), 1) == 15.0


def test_each_mode_takes_an_early_and_a_late_place(monkeypatch):
    """A phase's place costs more than sealing does (README): A B B A cancels a drift along the run."""
    monkeypatch.delenv("ONETHING_BENCH_AB_SEALED_FIRST", raising=False)
    assert bench_sealing.ab_order() == (False, True, True, False)
    monkeypatch.setenv("ONETHING_BENCH_AB_SEALED_FIRST", "1")
    assert bench_sealing.ab_order() == (True, False, False, True)
