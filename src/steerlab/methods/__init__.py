"""Steering methods: each module has a typed config and fit(lm, data, config) -> a steer."""
