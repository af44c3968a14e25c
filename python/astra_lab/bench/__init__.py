"""``astra bench``: ASTRA vs baselines across link bandwidths, on sim, netns or real links."""
