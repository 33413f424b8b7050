"""Small helpers every package shares: derived seeds, sizes, prompts, progress, the amplified-perturbation view,
optimizer-state moves, the allocator setting and the loopback Ray start-up."""
