"""Probing a task's visual prompts, in the order a run uses the parts:

inputs      examples + cached prompts -> the tensors a probe reads (ProbeInputs)
heads       the probe architectures (attentive, linear, mlp) and their parameter budget
fit         one probe fit: train, select on validation, score test once
joint       the joint regime's trainable resampler on cached vision features
conditions  every way a task is probed (regimes, baselines, oracle) and their summaries
cells       finished fits kept on disk, so a run resumes where it stopped
task        one task's cells, fitted once each and summed up
scoring     per-seed predictions -> metrics, CIs, chance, groups, per-item samples
mdl         online-code MDL (one fit per block)
"""
