"""Command-line tools: each module is a thin argument parser over functions the tests call directly."""
