"""The runtime: plan a container (spec, mounts, env, image config), then enter it via the C core."""
