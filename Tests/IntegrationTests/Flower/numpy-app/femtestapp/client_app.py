"""ClientApp: adds one to the model each round and reports the round through fem-client's reporter protocol."""
import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from femtestapp.fem_reporter import Reporter

app = ClientApp()
reporter = Reporter()


@app.train()
def train(msg: Message, context: Context) -> Message:
    arrays = msg.content["arrays"].to_numpy_ndarrays()
    server_round = int(msg.content["config"]["server-round"])
    updated = [a + 1.0 for a in arrays]
    loss = 1.0 / server_round
    reporter.model(server_round, accuracy=1.0 - loss / 2, loss=loss)
    metrics = MetricRecord({"train_loss": loss, "num-examples": 10})
    return Message(content=RecordDict({"arrays": ArrayRecord(updated), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    metrics = MetricRecord({"eval_loss": 0.5, "num-examples": 10})
    reply = Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
    # The last round's evaluation is this node's last work in the run: tell fem-client the task is done.
    if int(msg.content["config"]["server-round"]) >= int(context.run_config["num-server-rounds"]):
        reporter.finished()
    return reply
