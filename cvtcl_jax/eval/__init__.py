"""The evaluation protocols of docs/method.md §6, on any encoder.

sources         where an encoder comes from: a stage's checkpoint, an export, random init
features        backbone features over evaluation batches, sharded, multi-host safe
run             EvalRun: what the protocols of one run share (dataset, mesh, feature cache,
                result files)
retrieval       R@k, video features, fusion (NumPy)
classifier      the linear head and the finetuning model, their optimisers and step
accuracy        per-video predictions and top-k accuracy
protocols       retrieval, linear probe, finetuning (classifiers train in training.loop)
pictures        Figure 4's nearest-neighbour pictures
training_check  the retrieval a pretraining stage runs on held-out videos
"""
