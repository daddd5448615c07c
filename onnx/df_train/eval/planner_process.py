"""A `df_planner serve` process, spoken to line by line (the evaluations drive the Rust
planner through it)."""

import json
import os
import subprocess
import threading


class PlannerError(RuntimeError):
    """The planner exited, hung or refused a request: a failure of the run, not of df-train."""


class Planner:
    """One `df_planner serve` process. A request without a reply within `reply_timeout_s`
    (a hung planner) kills it and fails, rather than stall the evaluation forever."""

    def __init__(self, binary: str, config: str, args: list[str], reply_timeout_s: float = 600.0):
        self.cmd = [binary, "serve", "--config", config, *args]
        self.reply_timeout_s = reply_timeout_s
        self.timed_out = threading.Event()
        # The planner logs to stderr; by default only errors, so episodes do not flood the terminal.
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "error")}
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=env)

    def ask(self, request: dict) -> dict:
        def hung():
            self.timed_out.set()
            self.proc.kill()

        self.timed_out.clear()
        watchdog = threading.Timer(self.reply_timeout_s, hung)
        watchdog.start()
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        finally:
            watchdog.cancel()
        # A reply that came just as the watchdog fired is still the reply.
        if not line and self.timed_out.is_set():
            raise PlannerError(f"{' '.join(self.cmd)}: no reply to {request.get('op')} within "
                               f"{self.reply_timeout_s:g} s; killed")
        if not line:
            # Its own error message is on stderr, above.
            raise PlannerError(f"{' '.join(self.cmd)} exited with code {self.proc.wait()} (its error is above)")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise PlannerError(f"planner refused {request.get('op')}: {reply.get('error')}")
        return reply

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass  # it has already exited; ask() said so
        try:
            self.proc.wait(timeout=min(30.0, self.reply_timeout_s))
        except subprocess.TimeoutExpired:
            # It ignored the end of its input: do not leave it running, nor hide the error
            # that brought us here behind this one.
            self.proc.kill()
            self.proc.wait()
