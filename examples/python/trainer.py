"""A trainer that shares its model with evaluators as it learns (run evaluator.py beside it).

    python examples/python/trainer.py my_cluster [steps]

The model's parameters are tensor attributes of a synced object: optimizer.step() changes
them in place, client.flush() publishes what changed (torch's version counters tell it), and
each step reaches evaluators as a delta of the weights that moved.
"""

import sys

import torch

import easysync
from easysync import SyncedObject, shm_connect


def main():
    cluster = sys.argv[1] if len(sys.argv) > 1 else "easysync_example"
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    client = shm_connect(cluster)

    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    true_w = torch.arange(8, dtype=torch.float32).unsqueeze(0)

    @SyncedObject(client)
    class Training:
        def __init__(self):
            self.weight = model.weight          # the parameters the optimizer updates in place
            self.bias = model.bias
            self.step = 0
            self.done = False

    state = Training()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(1, steps + 1):
        x = torch.randn(64, 8)
        loss = torch.nn.functional.mse_loss(model(x), x @ true_w.T)
        opt.zero_grad()
        loss.backward()
        opt.step()
        client.flush()                          # weight and bias changed in place
        state.step = step
    state.done = True
    print(f"trainer: {steps} steps, loss {loss.item():.4f}, sent {client.stats['bytes_sent']} bytes",
          flush=True)
    # Stay until an evaluator said it saw the end (the last client to leave ends the cluster).
    easysync.wait_for_change(state, "done", timeout=30)
    client.close()


if __name__ == "__main__":
    main()
