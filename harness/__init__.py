"""Test and benchmark harness shared by tests/, bench/ and loadtests/: a real served Atelier."""
