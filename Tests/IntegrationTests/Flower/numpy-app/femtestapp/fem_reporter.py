"""fem_reporter: report from a tool to the fem-client node through its stdout (the reporter protocol).

Each call prints one JSON object on a line of its own and flushes, as FLMNGR's TaskReporter did. The node reads
these lines from any launcher (process, docker, flower) while the tool runs:

    {"type": "model", "round": 3, "metrics": {"accuracy": 0.91, "loss": 0.2}}  -> a `progress` event
    {"type": "info", "info": "Finished"}                                       -> the task is complete
    {"type": "info", "info": "..."}                                            -> a line in receiver.log
    {"type": "print", "message": "..."}                                        -> a line in receiver.log
    {"type": "error", "exception": "..."}                                      -> the task fails with this message
    {"type": "trigger", "trigger_name": "...", "trigger_arguments": "..."}     -> runs the node's hook of that
                                                                                  name, if its config has one

Any other line is an ordinary log line. Copy this file next to your tool; it needs only the standard library.

    from fem_reporter import Reporter
    reporter = Reporter()
    try:
        ...
        reporter.model(round_number, accuracy=acc, loss=loss)
        reporter.finished()
    except Exception as e:
        reporter.error(e)
        raise
"""
import json
import sys

__all__ = ["Reporter"]


class Reporter:
    def __init__(self, stream=None):
        self._stream = stream

    def _send(self, message: dict) -> None:
        stream = self._stream or sys.stdout
        stream.write(json.dumps(message, default=str) + "\n")
        stream.flush()

    def info(self, info: str) -> None:
        """Generic information; "Finished" tells the node the task is complete."""
        self._send({"type": "info", "info": str(info)})

    def finished(self) -> None:
        self.info("Finished")

    def print(self, message: str) -> None:
        self._send({"type": "print", "message": str(message)})

    def error(self, exception) -> None:
        """The task failed: the node stops it and reports this message."""
        self._send({"type": "error", "exception": str(exception)})

    def model(self, round_number: int, **metrics) -> None:
        """A round's metrics (accuracy, loss, ...): a progress event with `round` and `metrics`."""
        self._send({"type": "model", "round": int(round_number), "metrics": metrics})

    def trigger(self, name: str, arguments: str = "") -> None:
        self._send({"type": "trigger", "trigger_name": str(name), "trigger_arguments": str(arguments)})
