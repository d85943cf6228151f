"""The README's walk-through, run as a user pastes it: every ```sh block of the section, in
order, in one shell, against a real `sms-gateway serve --sandbox` started in a fresh directory
(only the ports differ: free ones instead of 8080 and 9000)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from .conftest import free_port, wait_until_healthy

ROOT = Path(__file__).resolve().parent.parent


def documents(text: str) -> list[Any]:
    """The JSON documents in `text`, one after another (curl adds no newline after each)."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while (at := len(text) - len(text[at:].lstrip())) < len(text):
        value, at = decoder.raw_decode(text, at)
        found.append(value)
    return found


def walk_through_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Walk-through (sandbox)")
    end = readme.index("\n## ", start + 1)
    return re.findall(r"```sh\n(.*?)```", readme[start:end], flags=re.S)


async def test_the_walk_through_works_as_pasted(tmp_path: Path) -> None:
    blocks = walk_through_blocks()
    assert len(blocks) >= 5
    gateway_port, receiver_port = free_port(), free_port()
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))  # the venv of the first command
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GATEWAY_") and not k.lower().endswith("_proxy")
    }
    env["GATEWAY_PORT"] = str(gateway_port)
    sandbox = await asyncio.create_subprocess_exec(
        str(tmp_path / ".venv" / "bin" / "sms-gateway"),
        "serve",
        "--sandbox",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_until_healthy(gateway_port)
        script = ["set -e"]
        for n, block in enumerate(blocks):
            block = block.replace("127.0.0.1:8080", f"127.0.0.1:{gateway_port}")
            block = block.replace("127.0.0.1:9000", f"127.0.0.1:{receiver_port}")
            # a person takes a moment between pastes; the sandbox reports delivery after 1 s
            script += [f"echo '=== block {n}'", block, "sleep 1.5"]
        script += ["sleep 2", "kill %1"]  # the receiver the last block started
        shell = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            "\n".join(script),
            cwd=tmp_path,
            env={**env, "PORT": str(receiver_port)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(shell.communicate(), 120)
    finally:
        sandbox.terminate()
        await sandbox.wait()
    output = out.decode()
    assert shell.returncode == 0, (output, err.decode())
    parts = dict(
        (int(m.group(1)), m.group(2))
        for m in re.finditer(r"=== block (\d+)\n(.*?)(?==== block|\Z)", output, flags=re.S)
    )
    assert parts[0] == ""  # the tokens went into variables
    (sent,) = documents(parts[1])
    assert [m["status"] for m in sent["messages"]] == ["sent", "failed"]
    looked_up, delivered, by_reference = documents(parts[2])
    assert looked_up["id"] == sent["messages"][0]["id"] and looked_up["status"] == "delivered"
    assert [m["id"] for m in delivered["data"]] == [looked_up["id"]]
    assert {m["reference"] for m in by_reference["data"]} == {"order-42"}
    created, patched, usage = documents(parts[3])
    assert created["id"] == "payments" and patched["daily_limit"] == 2000
    sandbox_usage = next(row for row in usage["data"] if row["team"] == "sandbox")
    assert (sandbox_usage["messages"], sandbox_usage["cost"]) == (1, 75)  # the refused one: free
    # the receiver's line: webhook-id, type, message id, recipient, status
    printed = re.findall(r"whk_\S+ message\.delivered msg_\w+ 250788000111 delivered", parts[4])
    assert len(printed) == 1, parts[4]
