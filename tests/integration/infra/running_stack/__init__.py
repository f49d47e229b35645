"""Tests that share one running local stack (a package, so the stack stops after its last test)."""
