"""ddkit: dataset distillation toolkit (data → select → teacher → synthesize → evaluate → report)."""
__version__ = "0.1.0"
