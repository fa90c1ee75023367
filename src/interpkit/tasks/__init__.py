"""Tasks: clean/corrupt prompt pairs with answers. Built-in generators and JSONL files."""

from interpkit.tasks._registry import GENERATORS as GENERATORS
from interpkit.tasks._registry import load as load
from interpkit.tasks._task import Task as Task
from interpkit.tasks._task import from_texts as from_texts
from interpkit.tasks._task import from_token_lists as from_token_lists
from interpkit.tasks.jsonl import load_jsonl as load_jsonl
from interpkit.tasks.jsonl import save_jsonl as save_jsonl

__all__ = ["GENERATORS", "Task", "from_texts", "from_token_lists", "load", "load_jsonl", "save_jsonl"]
