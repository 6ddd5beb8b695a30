"""The engine service: the Kafka adapter around the pure matching engine.

engine/*.py stays free of I/O; this package reads keel.orders, applies commands to
engine.Engine and publishes events, depth and snapshots with Kafka transactions.

    runner.EngineService    the process: one consumer, one worker per partition, liveness
    partition.PartitionWorker   standby -> taking over -> primary; one transaction per batch
    routing.Router          record -> command, or the reason it is dead-lettered
    wire.FastWire           the hot Avro encodings, byte-identical to schemas.codec
    depth.DepthFeed         diffs chained by event seq, periodic full books
    snapshots               chunked snapshots, found from the end of the log
    heartbeat.Heartbeats    primary beats and standby watch
    reader.LogReader        committed offsets, tails and ranges of topics
    replay                  `keel replay`: rebuild and audit a partition
    tools                   topic provisioning, feeding, reading and clean runs (tests, bench)
"""
