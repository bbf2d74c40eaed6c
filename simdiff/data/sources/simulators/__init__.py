"""Built-in simulators of real physics: the default datasets need no download."""
