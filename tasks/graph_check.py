"""The whole check of a stage graph, with its roles' prompts in the repository.

The graph checks itself when it loads (sdlc/graph.py); whether each role has a
prompt needs the repository's default branch, so ``sdlc graph check --repo`` and
the pipeline's start add it here: a role without one fails before any agent runs.
"""

from __future__ import annotations

from sdlc.graph import StageGraph, builtin_prompt, prompt_problems
from sdlc.models import AgentSpec
from tasks.failures import PermanentError
from tasks.worktree import default_branch_has


class InvalidStageGraph(PermanentError):
    """The stage graph in force cannot run; the message names every problem."""


def check_stage_graph(graph: StageGraph, repo: str | None = None) -> list[str]:
    """The roles of ``graph`` with no prompt; a role's prompt may come from ``repo``'s default branch.

    Where the repository cannot be read yet (a remote origin before its first
    clone), its prompts count as present: the stage names the missing prompt then.
    """

    def has_prompt(role: str) -> bool:
        if builtin_prompt(role) is not None:
            return True
        if repo is None:
            return False
        return default_branch_has(repo, f".sdlc/agents/{role}.md") is not False

    return prompt_problems(graph, has_prompt)


def role_profile_problems(agent: AgentSpec, graph: StageGraph) -> list[str]:
    """The roles ``agent.role_profiles`` names that no stage of ``graph`` has."""
    roles = sorted(set(graph.roles))
    return [
        f"an agent profile ({block}) is named for role {role!r}, which no stage has (roles: {', '.join(roles)})"
        for role, block in sorted(agent.role_profiles.items())
        if role not in roles
    ]


def require_valid_graph(graph: StageGraph, repo: str | None = None, agent: AgentSpec | None = None) -> None:
    """Raise :class:`InvalidStageGraph` naming every problem, if there are any (with ``agent``: its
    profiles per role too)."""
    problems = check_stage_graph(graph, repo) + (role_profile_problems(agent, graph) if agent else [])
    if problems:
        raise InvalidStageGraph("the stage graph cannot run: " + "; ".join(problems))
