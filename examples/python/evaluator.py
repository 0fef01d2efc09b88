"""An evaluator that follows a trainer's model (see trainer.py), reading the newest weights.

    python examples/python/evaluator.py my_cluster
"""

import sys

import torch

import easysync
from easysync import SyncedObject, shm_connect


def main():
    cluster = sys.argv[1] if len(sys.argv) > 1 else "easysync_example"
    client = shm_connect(cluster)
    model = torch.nn.Linear(8, 1)
    true_w = torch.arange(8, dtype=torch.float32).unsqueeze(0)

    @SyncedObject(client)
    class Training:
        def __init__(self):
            self.weight = model.weight          # bound: each new version is copied into it
            self.bias = model.bias
            self.step = 0
            self.done = False

    state = Training()
    torch.manual_seed(1)
    x = torch.randn(256, 8)
    evaluated = 0
    while True:
        easysync.pull(state)  # copies the newest weight and bias into the model, in place
        with torch.no_grad():
            loss = torch.nn.functional.mse_loss(model(x), x @ true_w.T).item()
        evaluated += 1
        if state.done:
            break
        if not easysync.wait_for_change(state, timeout=30):
            sys.exit("evaluator: the trainer went quiet")
    print(f"evaluator: step {state.step}, loss {loss:.4f}, {evaluated} evaluations, "
          f"latency {client.stats['latency_ms']:.3f} ms", flush=True)
    state.done = True  # tells the trainer it may leave
    client.close()


if __name__ == "__main__":
    main()
