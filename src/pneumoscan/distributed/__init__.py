"""distributed: prediction on a distributed engine (Ray Data), for archives beyond one machine.

`predict --engine ray` streams files through a pool of Ray actors, each holding one ONNX session,
and gives the local engine's results. The scheduler-agnostic path (`predict --shard I/N` plus
`merge`) stays in runtime.

May import: runtime and core, and ray (the [ray] extra).
"""
