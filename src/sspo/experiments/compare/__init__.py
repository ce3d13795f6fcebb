"""``sspo compare``: every objective × setting × seed from one preset, with controls and a report."""
