"""Consistency models with the AYT loss: ECT helpers, training objectives and samplers.

- :mod:`~mfd_loss.consistency.ect`: the schedule, weights and preconditioning of Easy Consistency Tuning
  (Geng et al. 2024) and the EDM teacher (Karras et al. 2022), one- and two-step sampling, distillation targets;
- :mod:`~mfd_loss.consistency.losses`: AYT's tangent loss (Kim, Cha & Ye 2025), pseudo-Huber, the blend;
- :mod:`~mfd_loss.consistency.objectives`: :func:`build_objective` (``--loss mfd|lpips|pseudo-huber|l2``) and
  the LPIPS baseline;
- :mod:`~mfd_loss.consistency.sampling`: EDM noise levels, ODE steps and the Heun sampler of a teacher;
- :mod:`~mfd_loss.consistency.continuous_time`: the continuous-time (JVP-based, sCM-style) objective with MFD
  of METHOD.md Sec. 5b.

Every name of these modules is importable from ``mfd_loss.consistency``.
"""

from __future__ import annotations

from .ect import (EDM_P_MEAN, EDM_P_STD, P_MEAN, P_STD, SIGMA_DATA, SIGMA_MAX, SIGMA_MID, EDMDenoiser, Preconditioning,
                  consistency_weight, distillation_target, edm_loss_weight, edm_preconditioning, one_step_sample,
                  r_from_t, sample_noise_levels, two_step_sample)
from .losses import (DIRECTIONS, ICT_HUBER_CONSTANT, TangentLoss, blend_losses, pseudo_huber, ramp, squared_l2,
                     tangent_loss)
from .objectives import OBJECTIVES, ConsistencyObjective, LPIPSDistance, ObjectiveOutput, build_objective
from .sampling import SIGMA_MIN, SOLVERS, edm_sigmas, heun_sample, ode_step
from .continuous_time import (TANGENT_C, ContinuousConsistencyLoss, ContinuousOutput, continuous_consistency_loss,
                              feature_tangent_loss, feature_vector, teacher_velocity)

__all__ = [
    "P_MEAN", "P_STD", "SIGMA_DATA", "SIGMA_MAX", "SIGMA_MID",
    "sample_noise_levels", "r_from_t", "consistency_weight", "Preconditioning", "edm_preconditioning",
    "EDMDenoiser", "one_step_sample", "two_step_sample",
    "EDM_P_MEAN", "EDM_P_STD", "edm_loss_weight", "distillation_target",
    "ICT_HUBER_CONSTANT", "DIRECTIONS", "pseudo_huber", "squared_l2", "tangent_loss", "TangentLoss", "ramp",
    "blend_losses", "LPIPSDistance", "ObjectiveOutput", "ConsistencyObjective", "OBJECTIVES", "build_objective",
    "SOLVERS", "SIGMA_MIN", "edm_sigmas", "ode_step", "heun_sample",
    "TANGENT_C", "ContinuousOutput", "feature_vector", "teacher_velocity", "feature_tangent_loss",
    "continuous_consistency_loss", "ContinuousConsistencyLoss",
]
