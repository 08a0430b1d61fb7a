"""`choreo ask [QUESTION]`: ask the operator agent; without a question, a conversation.

The agent only reads. When it proposes a replay, this command shows the dry run and asks;
only an explicit "y" runs it, through choreo.ops.replay exactly like `choreo dlq replay
--execute`. A proposed start of a stopped process runs, on "y", as `choreo up` starts it.
"""

from __future__ import annotations

import click

from choreo.agent.loop import Agent, AgentError, Answer, make_client
from choreo.cli.base import console, current_settings, fail
from choreo.cli.dlq import show_plan, show_records
from choreo.ops import replay as rp


@click.command()
@click.argument("question", required=False)
def ask(question: str | None) -> None:
    """Ask about the running system ("why was order ord-1 cancelled?"); needs ANTHROPIC_API_KEY."""
    settings = current_settings()
    try:
        agent = Agent(settings, make_client(settings))
    except AgentError as exc:
        fail(str(exc))
    try:
        if question:
            answer_and_confirm(agent, question)
        else:
            console.print("Ask about the running system; an empty line ends the conversation.")
            while True:
                q = click.prompt("you", default="", show_default=False).strip()
                if not q:
                    break
                answer_and_confirm(agent, q)
    except AgentError as exc:
        fail(f"{exc} (transcript: {agent.transcript_path()})")
    console.print(f"[dim]transcript: {agent.transcript_path()}[/dim]")


def answer_and_confirm(agent: Agent, question: str) -> Answer:
    answer = agent.ask(question)
    console.print(answer.text or "[no answer]")
    if answer.tool_calls:
        used = ", ".join(
            f"{c['name']}{' (failed)' if c['is_error'] else ''}" for c in answer.tool_calls
        )
        console.print(
            f"[dim]checked: {used}; {answer.rounds} round(s), "
            f"{answer.usage['input_tokens']}+{answer.usage['output_tokens']} tokens[/dim]"
        )
    for proposal in answer.proposals:
        action = (proposal.get("proposal") or {}).get("action")
        if action == "replay_dead_letters":
            confirm_replay(agent, proposal["proposal"])
        elif action == "start_process":
            confirm_start(agent, proposal["proposal"])
    return answer


def confirm_start(agent: Agent, proposal: dict) -> bool:
    """Start a stopped process, as `choreo up` does, only on "y"."""
    from choreo.ops.stack import Stack, bring_up, process_names

    settings, name = agent.settings, proposal.get("process")
    if name not in process_names(settings):
        console.print(f"the agent proposed starting an unknown process {name!r}: ignored")
        return False
    console.print(
        f"The agent proposes: start {name}"
        + (f" ({proposal.get('why')})" if proposal.get("why") else "")
    )
    pid = Stack(settings).pid(name)
    if pid is not None:
        console.print(f"{name} is running (pid {pid}): nothing to do.")
        return False
    if not click.confirm(f"Start {name} now (as `choreo up` does)?", default=False):
        console.print("Not started.")
        _tell(agent, f"(operator: {name} was NOT started)")
        return False
    stack = bring_up(settings, [name])
    console.print(f"started {name} (pid {stack.pid(name)}); log: {stack.logfile(name)}")
    _tell(agent, f"(operator: {name} started, pid {stack.pid(name)})")
    return True


def _tell(agent: Agent, note: str) -> None:
    agent.messages.append({"role": "user", "content": note})
    agent.save()


def confirm_replay(agent: Agent, proposal: dict) -> bool:
    """Show what the proposed replay would do now (a fresh dry run) and run it only on "y"."""
    settings, domain = agent.settings, proposal.get("domain")
    if domain not in (*settings.domains, "unrouted"):
        console.print(f"the agent proposed a replay of an unknown domain {domain!r}: ignored")
        return False
    ids = [str(i) for i in proposal.get("event_ids") or []]
    console.print(
        f"The agent proposes: replay dead letters of {domain}"
        + (f" ({proposal.get('why')})" if proposal.get("why") else "")
    )
    plan = rp.plan(settings, domain, ids or None)
    show_plan(plan, domain, False, ids)
    if not plan:
        return False
    ids = [c.letter.event_id for c in plan]  # exactly what the dry run showed
    if not click.confirm(f"Replay these {len(ids)} dead letter(s) of {domain} now?", default=False):
        console.print("Not replayed.")
        _tell(agent, "(operator: the proposed replay was NOT run)")
        return False
    run = rp.execute(settings, domain, ids)
    show_records(
        run.records, f"replay run {run.run_id} by {run.by}: {len(run.moved)} moved to {domain}"
    )
    _tell(agent, f"(operator: replay run {run.run_id} executed, {len(run.moved)} moved)")
    return True
