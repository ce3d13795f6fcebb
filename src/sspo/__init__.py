"""sspo: Soft Sequence Policy Optimization and its baselines for RL with verifiable rewards."""

__version__ = "0.1.0"
