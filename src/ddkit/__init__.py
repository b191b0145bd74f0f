"""ddkit: dataset distillation toolkit (data → select → teacher → synthesize → evaluate → report)."""
__version__ = "0.1.0"
INTERRUPTED = "ddkit: interrupted (finished work is kept; rerun the same command to resume)"
