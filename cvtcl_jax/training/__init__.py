"""Training of the pretraining stages.

loop    the one training loop (step, metric windows, NaN/Inf stop, checkpoints, periodic
        evaluation, progress with ETA); the evaluation's classifiers run it too
inputs  training batches on the devices from the config's data settings, resumable at a batch
stage   one stage (initialization or co-training of a view) in its workdir: set-up, restore or
        its start from earlier encoders, input, the loop; a finished stage returns before any
        compile
resume  what a resumed stage may change: its saved config against the new one, its length
"""
