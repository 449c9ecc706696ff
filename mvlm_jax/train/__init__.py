"""One trainer for LM pretraining, SFT and the VLM stages; the stage is configuration."""
