"""Fleet: gateway labels and selectors, staged rollouts with health gates, inventory."""
