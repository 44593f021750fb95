"""What every notebook's exercise checks share (`ddpm_lite.exercises`): an unanswered exercise (the student
copy's `raise NotImplementedError()`) gets the same message from every check that takes a function, and the
learner's own errors are reported, not raised as they are."""

import pytest
import torch

from ddpm_lite.exercises import (NOT_ANSWERED, ExerciseError, NotAnsweredError, allclose, call_answer, nb01, nb02,
                                 nb03, nb04, nb05, nb06, nb07, nb08, nb09, nb10, nb11, nb12)

# every check that takes the learner's function, in every notebook
FUNCTION_CHECKS = [
    nb01.check_q_sample, nb01.check_cosine_betas,
    nb02.check_posterior_coefficients, nb02.check_eps_to_x0, nb02.check_x0_to_v, nb02.check_prior_bpd, nb02.check_reverse_step,
    nb03.check_time_embedding, nb03.check_resblock_forward,
    nb04.check_simple_loss, nb04.check_ema_update, nb04.check_ema_warmup, nb04.check_training_step,
    nb05.check_guided_eps, nb05.check_drop_labels, nb05.check_cfg_loss,
    nb06.check_ddpm_sample, nb06.check_ddim_step,
    nb07.check_ddim_sigma, nb07.check_ddim_step, nb07.check_trailing_timesteps, nb07.check_ddim_sampler,
    nb08.check_dynamic_threshold, nb08.check_scale_to_w, nb08.check_saturated_fraction,
    nb09.check_reparam_kl, nb09.check_sdedit_timesteps, nb09.check_scale_factor,
    nb10.check_clip_loss, nb10.check_zero_shot,
    nb11.check_cross_attention, nb11.check_text_guidance, nb11.check_noise_augmentation,
    nb12.check_prior_preservation_loss,
]


def _todo(*args):
    raise NotImplementedError()


def _name(check):
    return f"{check.__module__.rsplit('.', 1)[-1]}.{check.__name__}"


@pytest.mark.parametrize("check", FUNCTION_CHECKS, ids=_name)
def test_an_unanswered_exercise_gets_the_same_message_everywhere(check):
    with pytest.raises(ExerciseError) as info:
        check(_todo)
    assert str(info.value) == NOT_ANSWERED
    assert "Not answered yet" in NOT_ANSWERED and "raise NotImplementedError()" in NOT_ANSWERED
    # still a NotImplementedError: "not done yet", never mistaken for a wrong answer
    assert isinstance(info.value, NotAnsweredError) and isinstance(info.value, NotImplementedError)


@pytest.mark.parametrize("check", FUNCTION_CHECKS, ids=_name)
def test_the_learners_errors_are_reported_not_raised(check):
    def broken(*args):
        raise RuntimeError("boom")

    with pytest.raises(ExerciseError, match="RuntimeError: boom"):
        check(broken)
    with pytest.raises(ExerciseError, match="pass your function itself"):
        check(torch.zeros(3))


def test_call_answer_passes_arguments_and_results_through():
    assert call_answer(lambda a, b: a + b, "add", 2, 3) == 5
    with pytest.raises(ExerciseError, match="`add` raised ZeroDivisionError"):
        call_answer(lambda a, b: a / b, "add", 1, 0)


def test_allclose_is_false_for_other_shapes():
    a = torch.ones(3)
    assert allclose(a, torch.ones(3, dtype=torch.float64) + 1e-7)
    assert not allclose(a, torch.ones(4)) and not allclose(a, torch.ones(1, 3))
    assert not allclose(a, a + 1e-3) and allclose(a, a + 1e-3, atol=1e-2)
