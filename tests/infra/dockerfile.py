"""A small reader for the project's Dockerfile (stages, ENV, RUN, USER, ENTRYPOINT), enough for
tests to run the image's own commands outside Docker."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


@dataclass
class Instruction:
    op: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def ops(self, op: str) -> list[Instruction]:
        return [i for i in self.instructions if i.op == op]

    def env(self) -> dict[str, str]:
        """ENV of this stage, with ARG defaults and earlier ENV substituted."""
        args: dict[str, str] = {}
        env: dict[str, str] = {}
        for i in self.instructions:
            if i.op == "ARG" and "=" in i.args:
                k, v = i.args.split("=", 1)
                args[k.strip()] = v.strip()
            elif i.op == "ENV":
                for part in shlex.split(i.args):
                    k, v = part.split("=", 1)
                    known = {**args, **env}
                    env[k] = re.sub(
                        r"\$\{?(\w+)\}?",
                        lambda m, known=known: known.get(m.group(1), m.group(0)),
                        v,
                    )
        return env

    def entrypoint(self) -> list[str]:
        (ep,) = self.ops("ENTRYPOINT")[-1:]
        return json.loads(ep.args)  # exec form only


def parse(path: Path = DOCKERFILE) -> list[Stage]:
    stages: list[Stage] = []
    pending, start = "", 0
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if not pending:
            start = n
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text, pending = pending + line, ""
        op, _, args = text.partition(" ")
        op = op.upper()
        if op == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.I)
            stages.append(Stage(m.group(1), m.group(2)))
        else:
            stages[-1].instructions.append(Instruction(op, args.strip(), start))
    return stages
