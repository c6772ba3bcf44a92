"""Sub-commands of the `linedraw` CLI, one module each, each exposing `register(subparsers)`."""
