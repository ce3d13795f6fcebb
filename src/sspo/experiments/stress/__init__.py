"""``sspo stress``: the off-policy stress ladder — objectives × levels of off-policyness × seeds, paired
within a seed, with τ sweeps where the gates are active (``docs/stress.md``)."""
