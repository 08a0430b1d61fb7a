"""`choreo ask`: an operator agent on the Anthropic SDK that answers from the running system.

tools: read-only views with size caps; loop: the messages loop (bounded rounds and tokens,
tool errors back to the model as error results, transcripts under the run folder). Actions are
never the model's: a replay it proposes is shown as a dry run and runs only on the operator's
explicit confirmation, through choreo.ops.replay like `choreo dlq replay --execute`.
"""
