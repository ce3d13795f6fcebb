"""The experiments, one folder each, over one shared run matrix (:mod:`.runner`) and statistics (:mod:`.stats`):

- ``compare/``: ``sspo compare``, every objective × setting × seed with controls;
- ``stress/``: ``sspo stress``, the off-policy stress ladder with paired statistics;
- ``bias_variance/``: ``sspo study bias-variance``, the exact gradient study.
"""
