"""sage-opd pipeline: the library the stages share (config, shards, envs, backends, policies)."""

__version__ = "0.1.0"
