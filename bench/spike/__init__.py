"""The IO-stack spike of issue 22: one minimal relay per stack and their runner (README.md)."""
