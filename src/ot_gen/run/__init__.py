"""One run: from a composed config to built parts (build), the run itself (train), sample
export, and what keeps a run safe (config checks, checkpoints, run record, pre-emption,
progress, loggers)."""
