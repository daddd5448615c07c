"""A `df_planner serve` process, spoken to line by line (the evaluations drive the Rust
planner through it)."""

import json
import os
import subprocess


class Planner:
    """One `df_planner serve` process."""

    def __init__(self, binary: str, config: str, args: list[str]):
        self.cmd = [binary, "serve", "--config", config, *args]
        # The planner logs to stderr; by default only errors, so episodes do not flood the terminal.
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "error")}
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=env)

    def ask(self, request: dict) -> dict:
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            # Its own error message is on stderr, above.
            raise RuntimeError(f"{' '.join(self.cmd)} exited with code {self.proc.wait()}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"planner refused {request.get('op')}: {reply.get('error')}")
        return reply

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass  # it has already exited; ask() said so
        self.proc.wait(timeout=30)
