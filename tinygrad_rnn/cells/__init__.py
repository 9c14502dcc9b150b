"""Built-in cells. Each module is an ordinary plugin: read elman.py first."""
