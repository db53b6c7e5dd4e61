"""Ablation studies: specs, plans (ids, phases, selection on validation), runner + launchers, aggregation,
reports.

    from crossattentiondet.studies import StudySettings, build_plan, load_spec, run_study

    spec = load_spec("cssa")                      # a built-in study, or a YAML spec file
    settings = StudySettings(quick=True, seeds=[0, 1])
    print(len(build_plan(spec, settings).runs()))
    run_study(spec, settings, max_parallel=2)     # skips finished runs, resumes partial ones
"""

from crossattentiondet.studies.plan import StudyPlan, StudySettings, build_plan
from crossattentiondet.studies.runner import run_study
from crossattentiondet.studies.spec import StudySpec, load_spec, spec_from_dict

__all__ = ["StudyPlan", "StudySettings", "StudySpec", "build_plan", "load_spec", "run_study", "spec_from_dict"]
