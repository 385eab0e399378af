"""Questions: the built-in synthetic set, or a local VideoMME-style JSON / JSONL file.

A local file holds records (a JSON list, or one JSON object per line) with:

- ``video``: a path (relative paths are resolved against the file's folder) or an http(s)/data URL;
- ``question``; ``options``: a list (``["red", "blue"]`` or already lettered ``["A. red", "B. blue"]``);
- ``answer``: the correct letter (``"A"``) or the correct option's text;
- optional ``task`` (or ``task_type``, VideoMME's field) to group accuracy by, and ``id`` (or
  ``question_id``).

Every question is asked as the same multiple-choice prompt (:func:`~vllm_vtprune.testing.video_qa.format_prompt`),
and a reply is scored by the first option letter it contains (:func:`parse_letter`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from vllm_vtprune.testing.video_qa import LETTERS, format_prompt, write_qa_set

_LETTERED = re.compile(r"^\s*\(?([A-Z])[.):]\s+")


@dataclass(frozen=True)
class Question:
    id: str
    video: str  # an absolute local path, or a URL
    question: str
    options: tuple[str, ...]
    answer: str  # the correct letter
    task: str

    @property
    def prompt(self) -> str:
        return format_prompt(self.question, self.options)

    @property
    def letters(self) -> str:
        return LETTERS[: len(self.options)]


def parse_letter(reply: str, letters: str) -> str | None:
    """The option letter a reply gives: ``"B"``, ``"B."``, ``"(B) blue"``, ``"The answer is B."``; else ``None``.

    The first standalone capital letter that is a valid option wins, so a leading ``"I think ..."`` does not
    count as option I unless there are nine options.
    """
    for match in re.finditer(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])", reply):
        if match.group(1) in letters:
            return match.group(1)
    return None


def _record_question(record: dict, index: int, base: Path) -> Question:
    options = tuple(_LETTERED.sub("", str(o)).strip() for o in record["options"])
    if not 2 <= len(options) <= len(LETTERS):
        raise ValueError(f"record {index}: {len(options)} options; between 2 and {len(LETTERS)} are supported")
    letters = LETTERS[: len(options)]
    answer = str(record["answer"]).strip()
    if answer not in letters:
        stripped = _LETTERED.sub("", answer).strip()
        if stripped in options:
            answer = letters[options.index(stripped)]
        elif (letter := parse_letter(answer, letters)) is not None and len(answer) <= 4:
            answer = letter  # "(B)" or "B."
        else:
            raise ValueError(f"record {index}: answer {record['answer']!r} is neither a letter of "
                             f"{letters} nor one of the options")
    video = str(record["video"])
    if not re.match(r"^(https?|data|file):", video):
        video = str((base / video).resolve())
    task = str(record.get("task", record.get("task_type", "all")))
    qid = str(record.get("id", record.get("question_id", index)))
    return Question(qid, video, str(record["question"]), options, answer, task)


def load_file(path: str | Path) -> list[Question]:
    """Questions from a JSON list or a JSONL file (see the module docstring for the fields)."""
    path = Path(path)
    text = path.read_text()
    if text.lstrip().startswith("["):
        records = json.loads(text)
    else:
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [_record_question(r, i, path.parent) for i, r in enumerate(records)]


def builtin(media_dir: Path, count: int, start: int = 0) -> list[Question]:
    """``count`` items of the synthetic test split (mp4 files written once into ``media_dir``)."""
    return load_file(write_qa_set(media_dir, "test", count, start))
