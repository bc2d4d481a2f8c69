"""What a run writes and what reads it back: the results JSON's schema (schema.py, re-exported here: it is
the public face of a results file), merging a rerun into an earlier file (merge.py), and model-vs-model
comparison (compare.py)."""

from .schema import (
    BUILD_INFO,
    JOINT_RECIPE,
    LIMIT_NOTE,
    SCHEMA_VERSION,
    ConditionResult,
    ExtractionStats,
    GridPoint,
    GroupScore,
    JointTraining,
    Mdl,
    MetricSummary,
    Paired,
    Recovered,
    RunResult,
    SeedRun,
    TaskResult,
    git_hash,
    provenance,
    read_results,
)

__all__ = ["BUILD_INFO", "JOINT_RECIPE", "LIMIT_NOTE", "SCHEMA_VERSION", "ConditionResult", "ExtractionStats",
           "GridPoint", "GroupScore", "JointTraining", "Mdl", "MetricSummary", "Paired", "Recovered", "RunResult",
           "SeedRun", "TaskResult", "git_hash", "provenance", "read_results"]
