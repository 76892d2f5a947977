"""Safe configurations never lose a page; unsafe ones can, and say why."""

from hypothesis import HealthCheck, given, settings
from strategies import configs

from pmlsim import simulate
from pmlsim.testing import allowed_causes


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs(safe=True))
def test_every_safe_configuration_loses_no_page(config):
    r = simulate(config)
    assert r.verified or not r.migration.converged
    assert r.lost == (), r.lost[:3]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_every_lost_page_names_a_cause_that_its_configuration_allows(config):
    r = simulate(config)
    assert {lp.cause for lp in r.lost} <= allowed_causes(config)
