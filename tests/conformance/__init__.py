"""Conformance of what a browser sees through streamhop with what it sees without it."""
