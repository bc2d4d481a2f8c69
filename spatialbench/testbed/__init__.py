"""The embedded testbed: a small BLIP-2 pretrained here on synthetic scenes (build.py: the two stages and the
builds; pretraining.py: scenes, targets, objectives and the training loop). Its checkpoints are tiny builds
(adapters/tiny/builds.py), loaded by the BLIP-2 family like any other checkpoint."""
