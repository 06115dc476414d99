// The stress tier measures throughput and timing: its tests run one at a time, never beside each other.
[assembly: CollectionBehavior(DisableTestParallelization = true)]
