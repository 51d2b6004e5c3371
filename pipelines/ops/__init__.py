"""Reaching a cluster from outside: job submission and retraining schedules."""


def all_problems(problems: list[str]) -> str:
    """One error message naming every problem found (one: itself), as `adm run` reports its configuration's."""
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems:\n  - " + "\n  - ".join(problems)
