"""Operations tooling used by Management.py: the emulated multi-node cluster and remote hosts over SSH."""
