"""The graph's nodes, as plain functions of (state or branch input, runtime) → update; graph.py
wires them. Each body runs under run.run_node: the node's policy, its STAGE events, its span."""
