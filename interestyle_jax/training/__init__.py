"""IntereStyle encoder training: state, per-device step, loop, checkpoints."""
