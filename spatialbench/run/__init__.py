"""Running: the runner (runner.py: tasks x model -> features -> probe fits -> results), the plan of a run
before any work (plan.py), and what a run shows a person (report.py). See docs/architecture.md."""
