"""What the harness measures on every cell: FID (:mod:`.fid`), MACs (:mod:`.macs`) and latency (:mod:`.latency`)."""
