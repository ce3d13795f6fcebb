"""``sspo study bias-variance``: exact bias and variance of every objective's gradient on an enumerable policy."""
