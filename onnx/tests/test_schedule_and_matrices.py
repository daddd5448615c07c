import numpy as np
import pytest

from df_train import matrices, schedule


@pytest.mark.parametrize("name", schedule.SCHEDULES)
@pytest.mark.parametrize("k", [10, 100, 1000])
def test_alpha_bar_is_a_schedule(name, k):
    ab = schedule.alphas_cumprod(name, k)
    assert ab.shape == (k,)
    assert np.all(ab > 0) and np.all(ab < 1)
    assert np.all(np.diff(ab) < 0)


def test_unknown_schedule_is_named():
    with pytest.raises(ValueError, match="schedule: unknown name 'zigzag'"):
        schedule.betas("zigzag", 10)


def test_level_to_timestep_spans_clean_to_noisiest():
    assert schedule.level_to_timestep(0, 1000, 50) == -1
    assert schedule.level_to_timestep(50, 1000, 50) == 999
    assert schedule.level_to_timestep(3, 10, 4) == 6


@pytest.mark.parametrize("kind", matrices.KINDS)
@pytest.mark.parametrize("horizon", [1, 2, 5, 6])
@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("u", [0.0, 0.5, 1.0, 1.5])
def test_matrix_laws(kind, horizon, steps, u):
    m = matrices.build(kind, horizon, steps, u)
    assert np.all(m[0] == steps) and np.all(m[-1] == 0)
    assert np.all(np.diff(m, axis=0) <= 0), "a level rises"
    assert np.all(np.any(np.diff(m, axis=0) != 0, axis=1)), "a row changes nothing"


def test_trapezoid_even_horizon_is_fully_denoised():
    m = matrices.trapezoid(4, 2, 1.0)
    assert m.tolist() == [[2, 2, 2, 2], [1, 2, 2, 1], [0, 1, 1, 0], [0, 0, 0, 0]]


def test_pyramid_shape():
    assert matrices.pyramid(3, 2, 1.0).tolist() == [[2, 2, 2], [1, 2, 2], [0, 1, 2], [0, 0, 1], [0, 0, 0]]
