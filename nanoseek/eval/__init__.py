"""Evaluation on verifiable tasks and GSM8K-style files; the report card."""

from nanoseek.eval.evaluate import TaskResult, chat_prompt, evaluate, load_examples, pass_at_k, response

__all__ = ["TaskResult", "chat_prompt", "evaluate", "load_examples", "pass_at_k", "response"]
