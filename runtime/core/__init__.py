"""Layer 0, the ground floor that training and export share: errors and exit codes, option checks, the names the
stages share, machine and package facts, atomic file IO, signals, command plumbing and scoring."""
