"""The training toolkit the method's loop, distillation and the embedder trainer share.

- `state`: the run's position (`RunState`) and its resumable state on disk, written as safetensors/JSON and read
  back without unpickling anything (`load_torch` refuses files that hold more than tensors and numbers).
- `checkpoints`: `RunCheckpoints`, save / publish / prune / resume of `step_XXXXXXXX/` folders under one root.
- `signals`: `StopOnSignal` (SIGINT/SIGTERM ask the loop to save and stop) and the DataLoader worker setup.
- `schedules`: learning-rate factors as `torch.optim.lr_scheduler.LambdaLR`, saved with the state.
- `method`: the method's loop on top of them (`linedraw train CONFIG`).
"""
