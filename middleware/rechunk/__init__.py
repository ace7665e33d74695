"""What happens between decoding and encoding: the :mod:`.coalescer` (when to write, what to
merge) and the per-provider merge rules in :mod:`.formats`. Sans-IO, clock injected."""
