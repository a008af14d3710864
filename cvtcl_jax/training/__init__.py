"""Training: the pretraining stages and everything else that trains.

trainer the skeleton everything that trains shares (workdir, checkpoints and writer, restore or
        start, step and input, the loop): a stage and the evaluation's classifiers are Trainers
loop    the one training loop (step, metric windows, NaN/Inf stop, checkpoints, periodic
        evaluation, progress with ETA); the evaluation's classifiers run it too
inputs  training batches on the devices from the config's data settings, resumable at a batch
stage   one stage (initialization or co-training of a view) as a Trainer: its train state, its
        start from earlier encoders, its step; a finished stage returns before any compile
resume  what a resumed stage may change: its saved config against the new one, its length
"""
