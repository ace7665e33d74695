"""The provider side: pooled requests (:mod:`.pool`) and relaying an SSE body through the
engine's pump (:mod:`.relay`)."""
