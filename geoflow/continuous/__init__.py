"""Continuous flows: CNFs on diffrax with exact or Hutchinson divergence, and flow matching
(paths, couplings, rectified flow). One integration path (:class:`ODESolver`) serves them all."""

from .cnf import FIELDS, ODEFlow, ODEResult, RegularizedLikelihood, cnf, make_field
from .couplings import COUPLINGS, couple, exact_assignment, sinkhorn_log_plan, squared_distances
from .divergence import exact_divergence, hutchinson_divergence, probe
from .fields import ConcatSquashMLP, Guided, TimeMLP
from .matching import EmpiricalSource, FlowMatching, cfm, flow_matching, ode_flow_of, with_solver
from .ode import ODESolver, fixed, make_solver
from .paths import (AffinePath, BridgePath, CondOT, Cosine, Polynomial, Scheduler, VariancePreserving,
                    make_path)
from .meanflow import MeanFlow, MeanFlowLoss
from .schedule_change import ScheduleChanged, with_schedule
from .rectified import OneStepDistillation, OneStepFlow, PairedFlowMatching, distill, reflow, reflow_pairs, straightness

__all__ = [
    "AffinePath", "BridgePath", "COUPLINGS", "ConcatSquashMLP", "CondOT", "Cosine", "EmpiricalSource",
    "FIELDS", "FlowMatching", "Guided", "MeanFlow", "MeanFlowLoss", "ODEFlow", "ODEResult", "ODESolver", "OneStepDistillation", "OneStepFlow",
    "PairedFlowMatching", "Polynomial", "RegularizedLikelihood", "ScheduleChanged", "Scheduler", "TimeMLP",
    "VariancePreserving", "cfm", "cnf", "couple", "distill", "exact_assignment", "exact_divergence",
    "fixed", "flow_matching", "hutchinson_divergence", "make_field", "make_path", "make_solver",
    "ode_flow_of", "probe", "reflow", "reflow_pairs", "sinkhorn_log_plan", "squared_distances",
    "straightness", "with_schedule", "with_solver",
]
